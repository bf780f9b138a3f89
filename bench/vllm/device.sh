#!/bin/bash
# Runs bench/vllm/run.py on a GPU machine that has Python 3.12 and torch 2.11 but no package
# registry, from files carried in two transfers of at most 64 MiB each (working tree included):
#
#   bash bench/vllm/device.sh part0       # call 1, carry [".vllmx/c1"]: the bundle's first 50 MiB
#                                         # (and adapter-1b-cpu/, a fallback adapter, ~4 MiB); kept in
#                                         # /tmp/vllmx-keep too, should the tree be laid anew
#   bash bench/vllm/device.sh run [ARGS]  # call 2 at once after (an idle machine goes back soon),
#                                         # carry [".vllmx/c2"]: the rest of the bundle, its md5 and the
#                                         # wheels; unpacks, installs, runs run.py --out "$OUT" ARGS
#
# `run --upstream workload --skip-bench --result bench/results/vllm-workload.json` has the trainer run
# `vllm serve` as a server job (what `tunelab model deploy --runtime vllm` does) instead of starting it here.
#
# What run.py does there (about 8 minutes): basemodel.py builds a random ChatGLM3-shaped ~1B in THUDM's
# layout on the GPU and imports it (`python -m tunelab.recipes.glm import`, sentencepiece from the
# image), the recipe trains the adapter (LoRA on q/k/v, one shared lora_A), vLLM serves the imported
# GlmForCausalLM with the adapter behind the gateway, the checks speak ChatGLM3's chat format.
#
# Preparing .vllmx (git-ignored through .git/info/exclude: it must never travel unasked) from the
# repository root: the vLLM 0.26.0 bundle (make_bundle.sh from the shared device notes; give it an
# absolute directory), cut into 50 MiB and the rest, and the wheels the gateway needs that neither the
# machine nor the bundle has:
#
#   grep -qx '/.vllmx/' .git/info/exclude || echo /.vllmx/ >> .git/info/exclude
#   PATH=$PWD/.venv/bin:$PATH bash ../shared/device/vllm/make_bundle.sh "$PWD/.vllmx/bundle"
#   mkdir -p .vllmx/c1 .vllmx/c2/wheels && split -b 50M -d -a 1 .vllmx/bundle/site.tar.xz .vllmx/bundle/part_
#   mv .vllmx/bundle/part_0 .vllmx/c1/ && mv .vllmx/bundle/part_1 .vllmx/c2/ && cp .vllmx/bundle/site.tar.xz.md5 .vllmx/c2/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#       --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d .vllmx/c2/wheels \
#       grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 protobuf==7.36.2 \
#       pydantic-settings==2.16.3 python-dotenv==1.2.4 SQLAlchemy==2.1.9 httptools==0.9.0 \
#       typer==0.29.3 click==8.5.1 rich==15.0.0 shellingham==1.5.4 markdown-it-py==4.3.0 mdurl==0.1.2 \
#       pygments==2.21.0 zstandard==0.25.0   # the job agent (`tunelab agent`), for --upstream workload
#   # optional fallback adapter: the 1b base (ChatGLM3-shaped, imported) built on the CPU, 3 recipe steps
#   PYTHONPATH=services/trainer python bench/vllm/basemodel.py /tmp/fb/base /tmp/fb/data --size 1b --device cpu
#   PYTHONPATH=services/trainer python -m tunelab.recipes.lora /tmp/fb/data /tmp/fb/base services/trainer/tunelab/recipes/lora/configs/lora.yaml \
#       --set training_args.output_dir=.vllmx/c1/adapter-1b-cpu --set training_args.max_steps=3 \
#       --set training_args.per_device_train_batch_size=2 --set data_config.val_file=null --set data_config.test_file=null
#
# fastapi, starlette, uvicorn, pydantic and typing-inspection come from the bundle (one version of
# each); grpcio and protobuf are carried because the generated stubs need protobuf 7 and grpcio 1.85
# (sentencepiece's own generated model_pb2, read by the importer, loads under protobuf 7 too).
# Environment: PY (default python3), VLLM_SITE, TL_SITE, WORK (default /tmp/vllm-bench), OUT,
# BENCH_TIMEOUT_S (default 540: run.py is stopped, and stops what it started, before a 600 s call limit).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
X=.vllmx
PY=${PY:-python3}
VLLM_SITE=${VLLM_SITE:-/tmp/vllm-site}
TL_SITE=${TL_SITE:-/tmp/tunelab-site}
WORK=${WORK:-/tmp/vllm-bench}
KEEP=/tmp/vllmx-keep  # part0's copy of .vllmx/c1, outside the working tree
T0=$SECONDS

case "${1:-}" in
part0)
    ls -la "$X/c1"
    mkdir -p "$KEEP" && cp -r "$X/c1/." "$KEEP/"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || true
    "$PY" -c 'import sys; print(sys.version)'
    for tool in xz md5sum timeout; do command -v "$tool" >/dev/null || echo "MISSING: $tool"; done
    "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|peft|tokenizers|safetensors|sentencepiece|accelerate|grpcio|protobuf|typing.extensions|httpx|uvloop|prometheus.client|nvidia-ml-py|pyyaml) ' || true
    exit 0
    ;;
run)
    shift
    ;;
*)
    echo "usage: bash bench/vllm/device.sh part0 | run [run.py arguments]" >&2
    exit 2
    ;;
esac

C1="$X/c1"
[ -f "$C1/part_0" ] || C1="$KEEP"
if [ ! -f "$VLLM_SITE/.ok" ]; then
    for f in "$C1/part_0" "$X/c2/part_1" "$X/c2/site.tar.xz.md5"; do
        [ -f "$f" ] || { echo "$f is missing: the machine was given back between the calls (or a carry was left out); run call 1 again, then call 2 within 30 s" >&2; exit 4; }
    done
    sum=$(cat "$C1/part_0" "$X/c2/part_1" | md5sum | awk '{print $1}')
    [ "$sum" = "$(cat "$X/c2/site.tar.xz.md5")" ] || { echo "bundle md5 mismatch: $sum" >&2; exit 4; }
    rm -rf "$VLLM_SITE" && mkdir -p "$VLLM_SITE"
    cat "$C1/part_0" "$X/c2/part_1" | xz -d -T0 | tar -x -C "$VLLM_SITE" || { echo "unpacking the bundle failed" >&2; exit 4; }
    touch "$VLLM_SITE/.ok"
fi
if [ ! -f "$TL_SITE/.ok" ]; then
    rm -rf "$TL_SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$TL_SITE" "$X"/c2/wheels/*.whl \
        || { echo "installing .vllmx/c2/wheels failed" >&2; exit 4; }
    touch "$TL_SITE/.ok"
fi
echo "bundle and wheels ready after $((SECONDS - T0)) s"

export PYTHONPATH="$TL_SITE:$VLLM_SITE${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_ALLOW_RUNTIME_LORA_UPDATING=True VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
rm -rf "$WORK"
EXTRA=()
[ -n "${OUT:-}" ] && EXTRA=(--out "$OUT")
# An adapter of the 1b model's shape made by the recipe on a CPU here, used only should the recipe
# fail on the GPU (the result then says so among its errors).
[ -f "$C1/adapter-1b-cpu/adapter_config.json" ] && EXTRA+=(--fallback-adapter "$C1/adapter-1b-cpu")
# Foreground, under timeout: SIGTERM lets run.py stop what it started and still write its result.
timeout -k 30 "${BENCH_TIMEOUT_S:-540}" "$PY" bench/vllm/run.py --work "$WORK" "${EXTRA[@]}" "$@"
rc=$?
# Should run.py itself have been killed: end every process group it started (each in its own session).
if [ -f "$WORK/pgids" ]; then
    while read -r pgid; do kill -KILL -- "-$pgid" 2>/dev/null; done < "$WORK/pgids"
fi
echo "run.py exited with $rc after $((SECONDS - T0)) s in all"
exit $rc
