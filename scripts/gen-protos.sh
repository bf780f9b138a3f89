#!/usr/bin/env bash
# Generates the Python gRPC stubs for every proto under protos/ into services/common.
#   scripts/gen-protos.sh PYTHON           write the stubs
#   scripts/gen-protos.sh PYTHON --check   exit 1 when the committed stubs differ from protos/
set -euo pipefail
py=${1:?usage: gen-protos.sh PYTHON [--check]}; [[ "$py" = /* ]] || py="$PWD/$py"
mode=${2:-write}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cd "$root/protos"
mapfile -t files < <(find tunelab -name '*.proto' | sort)
"$py" -m grpc_tools.protoc -I . --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "${files[@]}"
# Each versioned API directory is a regular package; the levels above stay namespace packages
# so that a service's own code (tunelab/datasets/...) and its stubs (tunelab/datasets/v1) merge.
find "$out" -type d -name 'v[0-9]*' -exec touch {}/__init__.py \;

if [ "$mode" = "--check" ]; then
  drift=0
  for f in $(cd "$out" && find tunelab -type f | sort); do
    if ! cmp -s "$out/$f" "$root/services/common/$f"; then echo "stale or missing stub: services/common/$f"; drift=1; fi
  done
  for f in $(cd "$root/services/common" && find tunelab -path '*/v[0-9]*/*' -type f \( -name '*_pb2*.py' -o -name '*_pb2.pyi' -o -name '__init__.py' \) | sort); do
    [ -e "$out/$f" ] || { echo "stub without a proto: services/common/$f"; drift=1; }
  done
  if [ "$drift" = 1 ]; then echo "protos/ and the stubs in services/common have drifted: run 'make protos' and commit."; exit 1; fi
  echo "stubs match protos/"
else
  (cd "$out" && find tunelab -type f) | while read -r f; do
    mkdir -p "$root/services/common/$(dirname "$f")"
    cp "$out/$f" "$root/services/common/$f"
  done
  echo "stubs written to services/common/tunelab/*/v*/"
fi
