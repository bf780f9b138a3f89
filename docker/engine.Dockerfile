# tunelab embedded engine: `python -m tunelab.engine`, an OpenAI-compatible server on transformers
# and peft, HTTP :8000 (vLLM's routes: /v1/*, /health, /metrics, runtime LoRA loading). It stands in
# for vLLM in compose's `cpu` profile; give it a model with `--model DIR` (see compose.yaml).
# Build from the repository root:  docker build -f docker/engine.Dockerfile -t ghcr.io/tunelab/engine .
# CPU torch by default (small); a CUDA build:  --build-arg TORCH_INDEX_URL=https://pypi.org/simple

# Base images: plain tags here; `make images` pins them by digest (docker/bases.lock).
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_NO_CACHE=1 UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never VIRTUAL_ENV=/opt/tunelab
RUN uv venv --python /usr/local/bin/python3.11 /opt/tunelab
# torch in a layer of its own: the largest and the least often changed.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN uv pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY docker/requirements/engine.txt /tmp/requirements.txt
RUN uv pip install --no-deps --require-hashes -r /tmp/requirements.txt
COPY services/engine /src/engine
RUN uv pip install --no-deps /src/engine

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 tunelab \
    && useradd --system --no-log-init --uid 10001 --gid tunelab --home-dir /var/lib/tunelab --create-home tunelab \
    && install -d -o tunelab -g tunelab /var/lib/tunelab/huggingface
COPY --from=build /opt/tunelab /opt/tunelab
ENV PATH=/opt/tunelab/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/tunelab HF_HOME=/var/lib/tunelab/huggingface
USER 10001:10001
WORKDIR /var/lib/tunelab
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["python", "-m", "tunelab.engine", "--host", "0.0.0.0", "--port", "8000"]
