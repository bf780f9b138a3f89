# tunelab gateway: `python -m tunelab.gateway`, gRPC :50054, HTTP front door :8000, Prometheus :9104.
# Build from the repository root:  docker build -f docker/gateway.Dockerfile -t ghcr.io/tunelab/gateway .
# No torch here: docker/requirements/gateway.txt is the whole dependency set. The gateway reaches
# vLLM or the engine image over HTTP; it cannot start embedded engines itself (no tunelab-engine).

# Base images: plain tags here; `make images` pins them by digest (docker/bases.lock).
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_NO_CACHE=1 UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never VIRTUAL_ENV=/opt/tunelab
RUN uv venv --python /usr/local/bin/python3.11 /opt/tunelab
# The lock first: this layer is rebuilt only when the dependencies change.
COPY docker/requirements/gateway.txt /tmp/requirements.txt
RUN uv pip install --no-deps --require-hashes -r /tmp/requirements.txt
COPY services/common /src/common
COPY services/gateway /src/gateway
RUN uv pip install --no-deps /src/common /src/gateway

FROM ${PYTHON_IMAGE}
# `install -d` owns only the last directory it names: each level the gateway writes is listed.
RUN groupadd --system --gid 10001 tunelab \
    && useradd --system --no-log-init --uid 10001 --gid tunelab --home-dir /var/lib/tunelab --create-home tunelab \
    && install -d -o tunelab -g tunelab /var/lib/tunelab/gateway /var/lib/tunelab/gateway/models
COPY --from=build /opt/tunelab /opt/tunelab
# NVIDIA_DRIVER_CAPABILITIES=utility: where a GPU is given, NVML only (the GPU series on /metrics).
ENV PATH=/opt/tunelab/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/tunelab TUNELAB_DATA_DIR=/var/lib/tunelab TUNELAB_HOST=0.0.0.0 TUNELAB_PORT=50054 \
    NVIDIA_DRIVER_CAPABILITIES=utility
USER 10001:10001
WORKDIR /var/lib/tunelab
EXPOSE 50054 8000 9104
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "tunelab.common.grpc.healthcheck", "gateway"]
ENTRYPOINT ["python", "-m", "tunelab.gateway"]
