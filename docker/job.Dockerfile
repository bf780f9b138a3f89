# tunelab job image: what a Kubernetes pod of a job runs. Entry point `tunelab agent` (the executor
# passes `--job … --attempt N --worker I`); the agent materializes the job's datasets and
# environment, runs its command and reports back. Carries the LoRA recipe
# (`python -m tunelab.recipes.lora`) over the base image's CUDA torch.
# Build from the repository root:  docker build -f docker/job.Dockerfile -t ghcr.io/tunelab/job .

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_NO_CACHE=1 UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never VIRTUAL_ENV=/opt/tunelab
# A virtual environment over the base image's Python that sees its torch (system site packages):
# torch is neither copied nor replaced. The lock holds everything else (it excludes torch).
RUN uv venv --system-site-packages --python python3 /opt/tunelab
COPY docker/requirements/trainer.txt /tmp/requirements.txt
RUN uv pip install --no-deps --require-hashes -r /tmp/requirements.txt
COPY services/common /src/common
COPY services/cli /src/cli
COPY services/trainer /src/trainer
RUN uv pip install --no-deps /src/common /src/cli /src/trainer

FROM pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime
RUN groupadd --system --gid 10001 tunelab \
    && useradd --system --no-log-init --uid 10001 --gid tunelab --home-dir /home/tunelab --create-home tunelab \
    && install -d -o tunelab -g tunelab /workspace
COPY --from=build /opt/tunelab /opt/tunelab
ENV PATH=/opt/tunelab/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/tunelab TUNELAB_CACHE_DIR=/home/tunelab/.cache/tunelab
USER 10001:10001
WORKDIR /workspace
ENTRYPOINT ["tunelab", "agent"]
