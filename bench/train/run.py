"""LoRA training speed: ChatGLM3 finetune_hf.py's setup (HF Seq2SeqTrainer + PEFT, padded batches of 4,
gradient checkpointing) against tunelab's recipe as users run it, side by side in one run on one GPU.

    python3 bench/train/run.py --out DIR        # on a GPU: the 6.24B ChatGLM3-shaped model (~6 minutes)
    python3 bench/train/run.py --out DIR --ddp  # with 2 GPUs: also `fast` data-parallel on both
    .venv/bin/python bench/train/run.py --tiny  # the same code on a CPU with a tiny model (< 1 minute)

In order: the bf16 matmul peak of this card (8192^3, random data); synthetic AdvertiseGen-shaped data
(synth.py); the random model, made on the GPU and saved with its tokenizer (the recipe loads it from
disk like any model); the same 8 samples' loss by transformers' own loss and by the recipe's (varlen
packing, chunked loss); the baseline (baseline.py), timed over `--baseline-steps` after warm-up; then
`python -m tunelab.recipes.lora DATA MODEL configs/lora.yaml no --set tunelab.profile=<mode> ...`
for each mode, timed from its own metrics lines after warm-up (compilation happens there). With
--ddp and 2 GPUs, last: `fast` under `torchrun --nproc-per-node 2` with the 1-GPU run's row size (the
same work per GPU; rank 0's metrics count both ranks' tokens), and its scaling efficiency:
tokens/s on 2 GPUs / (2 x tokens/s of the 1-GPU fast run). --tiny --ddp runs 2 CPU processes (gloo).

MFU = 4 * N_params * real tokens/s / measured matmul peak (LoRA: no weight gradients for the frozen
weights; recomputation from checkpointing is not counted). Writes bench/results/train.json (with
--tiny only DIR/train-tiny.json) and copies the result and a log into DIR.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "services" / "trainer"))

import common as bc  # noqa: E402
import synth  # noqa: E402
from report import report, summarize_recipe  # noqa: E402

LORA_YAML = "services/trainer/tunelab/recipes/lora/configs/lora.yaml"
LOG: list[str] = []
HIDE: dict[str, str] = {sys.executable: "python3"}  # machine paths never reach the results


def say(text: str) -> None:
    for path, name in HIDE.items():
        text = text.replace(path, name)
    line = f"[{time.strftime('%H:%M:%S')}] {bc.repo_relative(text)}"
    LOG.append(line)
    print(line, flush=True)


def matmul_peak(device: Any) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / statistics.median(times)


def environment(device: Any) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    try:
        import inspect

        from torch.nn.attention.varlen import varlen_attn

        env["varlen_attn"] = str(inspect.signature(varlen_attn))
    except ImportError:
        env["varlen_attn"] = "missing"
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = str(torch.version.cuda)
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            env["driver"], env["gpu_memory"] = (x.strip() for x in out.stdout.splitlines()[0].split(","))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    return env


def loss_check(model: Any, tok: Any, samples: list[Any], device: Any, autocast: Any) -> dict[str, float]:
    """The same samples' mean loss by transformers (padded, labels=) and by the recipe (varlen, chunked)."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    from tunelab.recipes.lora.attention import NAME, use_attention
    from tunelab.recipes.lora.batching import PackedLayout
    from tunelab.recipes.lora.loss import loss_sum

    rows = samples[:8]
    padded = DataCollatorForSeq2Seq(tok, padding="longest")(
        [{"input_ids": s.input_ids, "labels": s.labels} for s in rows]
    )
    length = sum(len(s.input_ids) for s in rows)
    layout = PackedLayout(
        1, length, tok.pad_token_id, "varlen", segment_cap=max(len(s.input_ids) for s in rows)
    )
    packed = layout.collate(rows, [list(range(len(rows)))])
    model.eval()
    with torch.no_grad():
        hf = float(model(**{k: v.to(device) for k, v in padded.items()}).loss)
        previous = use_attention(model, NAME)
        with autocast():
            ours = float(loss_sum(model, packed.to(device))) / packed.num_label_tokens
        use_attention(model, previous)
    model.train()
    return {"transformers_loss": hf, "tunelab_loss": ours, "relative_difference": abs(ours - hf) / abs(hf)}


def save_partial(out: Path | None, metrics: dict[str, Any]) -> None:
    """What is measured so far, in case a later phase dies with the process."""
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "partial.json").write_text(json.dumps(metrics, indent=1, default=str))
        (out / "train.log").write_text("\n".join(LOG) + "\n")


def run_recipe(
    mode: str,
    data: Path,
    model_dir: Path,
    work: Path,
    steps: int,
    extra: list[str],
    timeout: float,
    nproc: int = 1,
) -> dict[str, Any]:
    """The recipe as users run it: `python -m tunelab.recipes.lora ...`, or with `nproc` > 1 under
    `torchrun --nproc-per-node N` (data-parallel, one GPU a process); rank 0 writes the metrics."""
    label = mode if nproc == 1 else f"{mode}-{nproc}gpu"
    metrics = work / f"metrics-{label}.jsonl"
    metrics.unlink(missing_ok=True)
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd = [*launcher, "-m", "tunelab.recipes.lora", str(data), str(model_dir), LORA_YAML, "no"]
    cmd += ["--metrics-file", str(metrics)]
    sets = [
        f"training_args.output_dir={work / ('out-' + label)}",
        f"training_args.max_steps={steps}",
        "training_args.logging_steps=1",
        "training_args.save_strategy=no",
        "training_args.eval_strategy=no",
        "data_config.val_file=null",
        "data_config.test_file=null",
        f"tunelab.profile={mode}",
        *extra,
    ]
    for item in sets:
        cmd += ["--set", item]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(bc.REPO / "services" / "trainer"), os.environ.get("PYTHONPATH", "")]),
    )
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work / "inductor"))
    say(f"tunelab {label}: {' '.join(cmd)}")
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=bc.REPO, env=env, capture_output=True, text=True, timeout=timeout)
        code, tail = proc.returncode, (proc.stderr or "")[-3000:]
        (work / f"recipe-{label}.log").write_text(proc.stderr or "")
    except subprocess.TimeoutExpired as e:
        code, tail = -9, str(e.stderr or "")[-3000:]
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    result = {
        "mode": mode,
        "processes": nproc,
        "exit_code": code,
        "wall_seconds": time.perf_counter() - started,
        "overrides": sets[7:],
    }
    head = "python" if nproc == 1 else f"torchrun --nproc-per-node {nproc}"
    result["command"] = f"{head} -m tunelab.recipes.lora DATA MODEL {LORA_YAML} no " + " ".join(
        f"--set {s}" for s in sets[1:]
    )
    if code != 0:
        say(f"tunelab {label} failed ({code}):\n{tail}")
        result["error"] = tail[-1500:]
    return result | {"records": records}


def data_parallel(
    args: argparse.Namespace,
    tiny: bool,
    fast: dict[str, Any] | None,
    data: Path,
    model_dir: Path,
    work: Path,
    began: float,
) -> dict[str, Any]:
    """`fast` under torchrun on 2 GPUs, with the 1-GPU run's row size: the same work per GPU, so the
    rate over twice the 1-GPU rate is the scaling efficiency. {"skipped": why} where it can't run."""
    import torch

    gpus = torch.cuda.device_count()
    if not tiny and gpus < 2:
        return {"skipped": f"{gpus} GPU(s) on this machine: the 2-GPU run needs 2"}
    if not fast or fast.get("exit_code") != 0 or not fast.get("tokens_per_second"):
        return {"skipped": "the 1-GPU fast run did not complete: nothing to compare with"}
    left = args.deadline - (time.perf_counter() - began)
    if left < 60:
        say(f"skipping the 2-GPU run: {left:.0f}s left of the deadline")
        return {"skipped": f"{left:.0f}s left of --deadline {args.deadline:.0f}"}
    tokens = (fast.get("start") or {}).get("micro_batch_tokens")
    # What made the 1-GPU run (a retry's smaller rows, tiny's settings), then its row size.
    extra = [o for o in fast["overrides"] if not o.startswith("tunelab.profile=")]
    if tokens and not any(o.startswith("tunelab.pack_length=") for o in extra):
        extra += [f"tunelab.pack_length={tokens}", "training_args.per_device_train_batch_size=1"]
    result = run_recipe("fast", data, model_dir, work, args.warmup + args.steps, extra, left - 5, nproc=2)
    result = summarize_recipe(result, args.warmup)
    say(f"tunelab fast on 2 GPUs: { {k: v for k, v in result.items() if k not in ('losses', 'start')} }")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny model on the CPU: checks the code, not speed"
    )
    parser.add_argument("--out", type=Path, help="also copy the result and a log here")
    parser.add_argument("--modes", default="fast,low_memory", help="tunelab profiles to run")
    parser.add_argument("--baseline-steps", type=int, default=40)
    parser.add_argument("--baseline-warmup", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="measured steps per tunelab mode")
    parser.add_argument("--warmup", type=int, default=5, help="tunelab warm-up steps (compilation)")
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--deadline", type=float, default=540, help="seconds; later phases are skipped")
    parser.add_argument("--work", type=Path, help="scratch directory (default: /dev/shm or a temp dir)")
    parser.add_argument(
        "--ddp",
        action="store_true",
        help="also run `fast` on 2 GPUs (torchrun, data-parallel) and report its scaling efficiency; "
        "needs 2 GPUs (with --tiny: 2 CPU processes)",
    )
    args = parser.parse_args()
    began = time.perf_counter()
    if args.out:
        HIDE[str(args.out.resolve())] = HIDE[str(args.out)] = "OUT"

    import torch

    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu" if tiny else "cuda")
    shape = synth.TINY if tiny else synth.CHATGLM3_6B
    dtype = torch.float32 if tiny else torch.bfloat16
    if tiny:
        args.baseline_steps, args.steps, args.warmup, args.samples = 6, 4, 1, 200
    shm = Path("/dev/shm")  # the 12.5 GB model saves and loads at memory speed there
    use_shm = not tiny and shm.is_dir() and shutil.disk_usage(shm).free > 30e9
    root = args.work or Path(tempfile.mkdtemp(dir=shm if use_shm else None, prefix="bench-train-"))
    root.mkdir(parents=True, exist_ok=True)
    HIDE[str(root)] = "WORK"
    metrics: dict[str, Any] = {"environment": environment(device), "shape": vars(shape)}
    peak = matmul_peak(device)
    metrics["matmul_peak_tflops"] = peak / 1e12 if peak else None
    say(f"{metrics['environment']}; matmul peak {metrics['matmul_peak_tflops']} TFLOP/s")

    tok = synth.tokenizer(shape.vocab_size)
    data = synth.write_data(root / "data", args.samples, shape.vocab_size)
    model = synth.build_model(shape, tok, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    model_dir = synth.save_model(model, tok, root / "model")
    say(f"model: {n_params / 1e9:.3f}B parameters, saved at {time.perf_counter() - began:.0f}s")

    from tunelab.recipes.lora.batching import epoch_order
    from tunelab.recipes.lora.data import ChatFormat, tokenize_file

    fmt_tok = synth.tokenizer(shape.vocab_size)
    samples = tokenize_file(data / "train.json", fmt_tok, ChatFormat(fmt_tok), 256, 512).samples
    metrics["data"] = {
        "samples": len(samples),
        "mean_tokens": statistics.fmean(len(s.input_ids) for s in samples),
    }
    metrics["data"]["mean_answer_tokens"] = statistics.fmean(len(s.input_ids) - s.prompt_len for s in samples)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=not tiny)

    metrics["loss_check"] = loss_check(model, tok, samples, device, autocast)
    say(f"loss check: {metrics['loss_check']}")

    from baseline import run_baseline

    order = epoch_order(len(samples), 42, 0)
    metrics["baseline"] = run_baseline(
        model, tok, samples, order, args.baseline_warmup if not tiny else 1, args.baseline_steps, tiny
    )
    del model
    gc.collect()
    if not tiny:
        torch.cuda.empty_cache()
        say(f"after the baseline this process holds {torch.cuda.memory_reserved() / 1e9:.2f} GB")
    say(f"baseline: { {k: v for k, v in metrics['baseline'].items() if k != 'losses'} }")
    save_partial(args.out, metrics)

    runs: dict[str, Any] = {}
    steps = args.warmup + args.steps
    for mode in [m for m in args.modes.split(",") if m]:

        def attempt(extra: list[str], mode: str = mode) -> dict[str, Any] | None:
            left = args.deadline - (time.perf_counter() - began)
            if left < 60:
                say(f"skipping {mode} {extra}: {left:.0f}s left of the deadline")
                return None
            result = run_recipe(mode, data, model_dir, root, steps, extra, left - 5)
            return summarize_recipe(result, args.warmup)

        if tiny:
            result = attempt(["tunelab.compile=false", "tunelab.packing_mode=varlen"])
        else:
            result = attempt([])
            if result and result["exit_code"] != 0:  # out of memory: half the tokens; else no compiling
                tokens = ((result.get("start") or {}).get("micro_batch_tokens") or 8192) // 2
                oom = "out of memory" in result.get("error", "").lower()
                smaller = [
                    f"tunelab.pack_length={max(tokens, 1024)}",
                    "training_args.per_device_train_batch_size=1",
                ]
                result = attempt(smaller if oom else ["tunelab.compile=false"]) or result
            elif result and mode == "low_memory" and result.get("peak_reserved_bytes", 0) > 20e9:
                runs["low_memory_8192"] = result
                result = (
                    attempt(["tunelab.pack_length=4096", "training_args.per_device_train_batch_size=1"])
                    or result
                )
        if result:
            runs[mode] = result
            save_partial(args.out, metrics | {"tunelab": runs})
            say(f"tunelab {mode}: { {k: v for k, v in result.items() if k not in ('losses', 'start')} }")
    metrics["tunelab"] = runs
    if args.ddp:
        metrics["data_parallel"] = data_parallel(args, tiny, runs.get("fast"), data, model_dir, root, began)
        save_partial(args.out, metrics)
    shutil.rmtree(root / "model", ignore_errors=True)
    if args.out:
        for log in root.glob("recipe-*.log"):  # with the machine's paths hidden, as in the result
            text = log.read_text()
            for path, name in HIDE.items():
                text = text.replace(path, name)
            (args.out / log.name).write_text(bc.repo_relative(text))
    return report(metrics, n_params, tiny, args.out, LOG)


if __name__ == "__main__":
    sys.exit(main())
