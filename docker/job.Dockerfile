# tunelab job image: what a Kubernetes pod of a job runs. Entry point `tunelab agent` (the executor
# passes `--job … --attempt N --worker I`); the agent materializes the job's datasets and
# environment, runs its command and reports back. Carries the LoRA recipe
# (`python -m tunelab.recipes.lora`) and torch.
# Build from the repository root:  docker build -f docker/job.Dockerfile -t ghcr.io/tunelab/job .
#
# Same base as the environments image: an environment is a virtual environment over that image's
# /usr/local/bin/python3.11, so a job with `--env` runs it here unchanged (a PyTorch base image
# would bring another interpreter, and the environment would not start).

# Base images: plain tags here; `make images` pins them by digest (docker/bases.lock).
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_NO_CACHE=1 UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never VIRTUAL_ENV=/opt/tunelab
RUN uv venv --python /usr/local/bin/python3.11 /opt/tunelab
# torch in a layer of its own: the largest and the least often changed. PyPI's Linux build is the
# CUDA one (its CUDA libraries come as wheels; the driver comes from the node).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN uv pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# Then the lock (everything else, pinned with hashes), then our code.
COPY docker/requirements/trainer.txt /tmp/requirements.txt
RUN uv pip install --no-deps --require-hashes -r /tmp/requirements.txt
COPY services/common /src/common
COPY services/cli /src/cli
COPY services/trainer /src/trainer
RUN uv pip install --no-deps /src/common /src/cli /src/trainer

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 tunelab \
    && useradd --system --no-log-init --uid 10001 --gid tunelab --home-dir /home/tunelab --create-home tunelab \
    && install -d -o tunelab -g tunelab /workspace
COPY --from=build /opt/tunelab /opt/tunelab
ENV PATH=/opt/tunelab/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/tunelab TUNELAB_CACHE_DIR=/home/tunelab/.cache/tunelab \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /workspace
ENTRYPOINT ["tunelab", "agent"]
