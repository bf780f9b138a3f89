# tunelab environments service: `python -m tunelab.environments`, gRPC :50052, Prometheus :9102.
# Build from the repository root:  docker build -f docker/environments.Dockerfile -t ghcr.io/tunelab/environments .
# No torch here: docker/requirements/environments.txt is the whole dependency set (uv included).
#
# Environments are virtual environments over this image's interpreter, /usr/local/bin/python3.11,
# so they run where that same interpreter is: the trainer image (same base). TUNELAB_PYTHONS lists it.

# Base images: plain tags here; `make images` pins them by digest (docker/bases.lock).
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_NO_CACHE=1 UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never VIRTUAL_ENV=/opt/tunelab
RUN uv venv --python /usr/local/bin/python3.11 /opt/tunelab
# The lock first: this layer is rebuilt only when the dependencies change.
COPY docker/requirements/environments.txt /tmp/requirements.txt
RUN uv pip install --no-deps --require-hashes -r /tmp/requirements.txt
COPY services/common /src/common
COPY services/environments /src/environments
RUN uv pip install --no-deps /src/common /src/environments

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 tunelab \
    && useradd --system --no-log-init --uid 10001 --gid tunelab --home-dir /var/lib/tunelab --create-home tunelab
COPY --from=build /opt/tunelab /opt/tunelab
ENV PATH=/opt/tunelab/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/tunelab TUNELAB_DATA_DIR=/var/lib/tunelab TUNELAB_HOST=0.0.0.0 TUNELAB_PORT=50052 \
    TUNELAB_PYTHONS='["/usr/local/bin/python3.11"]' UV_PYTHON_DOWNLOADS=never
USER 10001:10001
WORKDIR /var/lib/tunelab
EXPOSE 50052 9102
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "tunelab.common.grpc.healthcheck", "environments"]
ENTRYPOINT ["python", "-m", "tunelab.environments"]
