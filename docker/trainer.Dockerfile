# tunelab trainer service: `python -m tunelab.trainer`, gRPC :50053, Prometheus :9103. Its local
# executor runs each job's agent (`tunelab agent`) as a process in this container, so the image
# carries the agent, the LoRA recipe (`python -m tunelab.recipes.lora`) and torch.
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t ghcr.io/tunelab/trainer .
# CPU-only (smaller):  --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Without torch (Kubernetes executor):  --build-arg TORCH_VERSION=
#
# Same base as the environments image: environments built there (over /usr/local/bin/python3.11)
# run here unchanged.

# Base images: plain tags here; `make images` pins them by digest (docker/bases.lock).
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_NO_CACHE=1 UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never VIRTUAL_ENV=/opt/tunelab
RUN uv venv --python /usr/local/bin/python3.11 /opt/tunelab
# torch in a layer of its own: the largest and the least often changed. PyPI's Linux build is the
# CUDA one (its CUDA libraries come as wheels; the driver comes from the host). An empty
# TORCH_VERSION leaves torch out: enough for a trainer whose jobs run in the job image
# (TUNELAB_EXECUTOR=kubernetes), as the service itself never imports it.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN if [ -n "${TORCH_VERSION}" ]; then \
        uv pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    fi
# Then the lock (everything else, pinned with hashes), then our code.
COPY docker/requirements/trainer.txt /tmp/requirements.txt
RUN uv pip install --no-deps --require-hashes -r /tmp/requirements.txt
COPY services/common /src/common
COPY services/cli /src/cli
COPY services/trainer /src/trainer
RUN uv pip install --no-deps /src/common /src/cli /src/trainer

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 tunelab \
    && useradd --system --no-log-init --uid 10001 --gid tunelab --home-dir /var/lib/tunelab --create-home tunelab
COPY --from=build /opt/tunelab /opt/tunelab
ENV PATH=/opt/tunelab/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/tunelab TUNELAB_DATA_DIR=/var/lib/tunelab TUNELAB_HOST=0.0.0.0 TUNELAB_PORT=50053 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /var/lib/tunelab
EXPOSE 50053 9103
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "tunelab.common.grpc.healthcheck", "trainer"]
ENTRYPOINT ["python", "-m", "tunelab.trainer"]
