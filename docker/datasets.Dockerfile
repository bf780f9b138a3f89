# tunelab datasets service: `python -m tunelab.datasets`, gRPC :50051, Prometheus :9101.
# Build from the repository root:  docker build -f docker/datasets.Dockerfile -t ghcr.io/tunelab/datasets .
# No torch here: docker/requirements/datasets.txt is the whole dependency set.

# Base images: plain tags here; `make images` pins them by digest (docker/bases.lock).
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_NO_CACHE=1 UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never VIRTUAL_ENV=/opt/tunelab
RUN uv venv --python /usr/local/bin/python3.11 /opt/tunelab
# The lock first: this layer is rebuilt only when the dependencies change.
COPY docker/requirements/datasets.txt /tmp/requirements.txt
RUN uv pip install --no-deps --require-hashes -r /tmp/requirements.txt
COPY services/common /src/common
COPY services/datasets /src/datasets
RUN uv pip install --no-deps /src/common /src/datasets

FROM ${PYTHON_IMAGE}
# git for `--source git+https://…` datasets. Not pinned to an exact version: Debian's archive drops a
# version once a security update supersedes it, so a pin would break rebuilds (the tag fixes the release).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tunelab \
    && useradd --system --no-log-init --uid 10001 --gid tunelab --home-dir /var/lib/tunelab --create-home tunelab
COPY --from=build /opt/tunelab /opt/tunelab
ENV PATH=/opt/tunelab/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/tunelab TUNELAB_DATA_DIR=/var/lib/tunelab TUNELAB_HOST=0.0.0.0 TUNELAB_PORT=50051
USER 10001:10001
WORKDIR /var/lib/tunelab
EXPOSE 50051 9101
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "tunelab.common.grpc.healthcheck", "datasets"]
ENTRYPOINT ["python", "-m", "tunelab.datasets"]
