#!/usr/bin/env bash
# Builds the images compose.yaml and k8s/ name, from the repository root (`make images`):
#
#   docker/build.sh [IMAGE...]     default: datasets environments gateway trainer trainer-cpu engine job
#
# Each is ${IMAGE_PREFIX}/<image>:${IMAGE_TAG} (ghcr.io/tunelab/…:dev); trainer-cpu is the trainer
# Dockerfile with CPU torch, tagged trainer:${IMAGE_TAG}-cpu as compose's cpu profile names it.
# Environment: DOCKER (the client), BASE_DIGESTS (off: tags only), IMAGE_PREFIX, IMAGE_TAG, CPU_TORCH_INDEX_URL (where CPU torch
# comes from), and BUILD_ARGS (more `docker build` arguments, e.g. --build-arg HTTPS_PROXY=…).
# Base images are pinned by digest in docker/bases.lock (see docker/bases.py): each build gets
# them as build args, so the Dockerfiles' FROM lines stay plain tags.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
IMAGE_PREFIX=${IMAGE_PREFIX:-ghcr.io/tunelab}
IMAGE_TAG=${IMAGE_TAG:-dev}
CPU_TORCH_INDEX_URL=${CPU_TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
read -r -a extra <<<"${BUILD_ARGS:-}"
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(datasets environments gateway trainer trainer-cpu engine job)

# BASE_DIGESTS=off builds on the tags alone (the compose test's stand-ins carry the tags only).
bases=()
if [ "${BASE_DIGESTS:-on}" != off ]; then
  while read -r arg ref; do
    [ -n "$arg" ] && bases+=(--build-arg "$arg=$ref")
  done < <(${PYTHON:-python3} docker/bases.py --build-args)
fi

for image in "${images[@]}"; do
  args=()
  case "$image" in
    trainer-cpu) file=trainer tag="$IMAGE_PREFIX/trainer:$IMAGE_TAG-cpu" args=(--build-arg "TORCH_INDEX_URL=$CPU_TORCH_INDEX_URL") ;;
    engine) file=engine tag="$IMAGE_PREFIX/engine:$IMAGE_TAG" args=(--build-arg "TORCH_INDEX_URL=$CPU_TORCH_INDEX_URL") ;;
    datasets | environments | gateway | trainer | job) file=$image tag="$IMAGE_PREFIX/$image:$IMAGE_TAG" ;;
    *) echo "unknown image '$image': use datasets environments gateway trainer trainer-cpu engine job" >&2; exit 2 ;;
  esac
  printf '==> %s (docker/%s.Dockerfile)\n' "$tag" "$file"
  "$DOCKER" build -f "docker/$file.Dockerfile" -t "$tag" "${bases[@]}" "${args[@]}" "${extra[@]}" .
done
