"""LoRA training speed on ChatGLM3-6B's real architecture: ChatGLM3 finetune_hf.py's setup on THUDM's own
model code (HF Seq2SeqTrainer + PEFT, padded batches of 4, gradient checkpointing) against tunelab's
recipe on the same weights imported into transformers' `glm`, side by side in one run on one GPU.

    python3 bench/train/run.py --out DIR        # on a GPU: the 6.24B model, random weights (~4-5 minutes)
    python3 bench/train/run.py --out DIR --ddp  # with 2 GPUs: also `fast` data-parallel on both
    .venv/bin/python bench/train/run.py --tiny  # the same code on a CPU, the fixture's tiny config (~1 min)

In order: the bf16 matmul peak of this card (8192^3, random data); a sentencepiece tokenizer with
ChatGLM3's id layout and AdvertiseGen-shaped data (synth.py); THUDM's ChatGLMForConditionalGeneration
built from `config.full-size.json` (THUDM's code from the fixture, patched in memory by the tests'
loaders) with random fp16 weights on the GPU, written as a download of THUDM/chatglm3-6b (7 shards,
index, config, tokenizer, THUDM's .py files; chatglm.py); THUDM's model's loss on 8 samples (fp32 and
bf16); the baseline on it in bf16 (baseline.py); `python -m tunelab.recipes.glm import` of that folder,
timed, with its peak RSS (importing.py); the imported model's loss on the same 8 samples (fp32: must
match THUDM's; bf16) and the recipe's loss on them (losses.py); then
`python -m tunelab.recipes.lora DATA IMPORTED configs/lora.yaml no --set tunelab.profile=<mode> ...` for
each mode, timed from its own metrics lines after warm-up (compilation happens there). With --ddp and 2
GPUs, last: `fast` under `torchrun --nproc-per-node 2` with the 1-GPU run's row size (the same work per
GPU; rank 0's metrics count both ranks' tokens), and its scaling efficiency: tokens/s on 2 GPUs / (2 x
tokens/s of the 1-GPU fast run). --tiny --ddp runs 2 CPU processes (gloo).

MFU = 4 * N_params * real tokens/s / measured matmul peak (LoRA: no weight gradients for the frozen
weights; recomputation from checkpointing is not counted). Writes bench/results/train.json (with
--tiny only DIR/train-tiny.json) and copies the result and a log into DIR. THUDM's code must be readable
(chatglm.find_code): on a GPU machine, carry a copy of the fixture in bench/data/chatglm3-6b-tiny.
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
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "services" / "trainer"))

import chatglm  # noqa: E402
import common as bc  # noqa: E402
import importing  # noqa: E402
import losses  # noqa: E402
import synth  # noqa: E402
from report import report, summarize_recipe  # noqa: E402

LORA_YAML = "services/trainer/tunelab/recipes/lora/configs/lora.yaml"
LOG: list[str] = []
HIDE: dict[str, str] = {sys.executable: "python3"}  # machine paths never reach the results


def hide(text: str) -> str:
    """`text` with this machine's paths replaced (results and logs never name them)."""
    for path, name in HIDE.items():
        text = text.replace(path, name)
    return bc.repo_relative(text)


def say(text: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {hide(text)}"
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="the fixture's tiny ChatGLM3 on the CPU: checks the code, not speed",
    )
    parser.add_argument("--out", type=Path, help="also copy the result and a log here")
    parser.add_argument(
        "--chatglm-code", type=Path, help="folder with THUDM's code (default: see chatglm.py)"
    )
    parser.add_argument("--modes", default="fast,low_memory", help="tunelab profiles to run")
    parser.add_argument("--baseline-steps", type=int, default=20)
    parser.add_argument("--baseline-warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="measured steps per tunelab mode")
    parser.add_argument("--warmup", type=int, default=2, help="tunelab warm-up steps (compilation)")
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--deadline", type=float, default=500, help="seconds; later phases are skipped")
    parser.add_argument("--work", type=Path, help="scratch directory (default: /dev/shm or a temp dir)")
    parser.add_argument(
        "--ddp",
        action="store_true",
        help="also run `fast` on 2 GPUs (torchrun, data-parallel) and report its scaling efficiency; "
        "needs 2 GPUs (with --tiny: 2 CPU processes)",
    )
    return parser.parse_args()


def scratch(args: argparse.Namespace, tiny: bool) -> Path:
    """/dev/shm where it can hold both checkpoints (2 x 12.5 GB) with room to spare, else a temp dir."""
    shm = Path("/dev/shm")
    use_shm = not tiny and shm.is_dir() and shutil.disk_usage(shm).free > 45e9
    root = args.work or Path(tempfile.mkdtemp(dir=shm if use_shm else None, prefix="bench-train-"))
    root.mkdir(parents=True, exist_ok=True)
    HIDE[str(root)] = "WORK"
    return root


def phase(metrics: dict[str, Any], name: str, started: float) -> float:
    """Records the seconds since `started` as phase `name`; returns now (the next phase's start)."""
    now = time.perf_counter()
    metrics.setdefault("phases_s", {})[name] = round(now - started, 1)
    return now


def thudm_side(
    args: argparse.Namespace, metrics: dict[str, Any], root: Path, tiny: bool, device: Any
) -> tuple[Path, int, dict[str, Any]]:
    """Inputs, THUDM's model written as a download, its losses, the baseline on it. Returns the
    checkpoint folder, the parameter count, and what the imported model's checks need."""
    import torch

    code = chatglm.find_code(args.chatglm_code)
    started = time.perf_counter()
    words = synth.Words(synth.TINY_PIECES if tiny else synth.FULL_PIECES)
    sp_model = synth.train_tokenizer(words)
    rows = synth.conversations(args.samples, words, sp_model)
    data = synth.write_data(root / "data", rows)
    metrics["tokenizer"] = {
        "kind": "sentencepiece BPE, ChatGLM3's id layout (scripts/chatglm3_standin.train_tokenizer)",
        "pieces": words.pieces,
        "seconds": time.perf_counter() - started,
    }
    started = phase(metrics, "tokenizer_and_data", started)
    config = chatglm.thudm_config(code, tiny)
    metrics["model"] = {
        "code": "THUDM modeling_chatglm.py (the fixture's), transformers-5 patches in memory",
        "config": "config.json (tiny fixture)" if tiny else "config.full-size.json (THUDM/chatglm3-6b)",
        **{k: config[k] for k in chatglm.SHAPE_KEYS},
    }
    # fp16 on disk, as THUDM publishes chatglm3-6b; both sides then compute in bf16 (fp32 on a CPU)
    model = chatglm.build_model(code, config, torch.float32 if tiny else torch.float16, device)
    n_params = sum(p.numel() for p in model.parameters())
    started = phase(metrics, "build_thudm_model", started)
    src = root / "chatglm3-6b"
    metrics["checkpoint"] = chatglm.write_checkpoint(
        model, config, code, sp_model, src, 3 if tiny else chatglm.HUB_SHARDS
    )
    started = phase(metrics, "write_checkpoint", started)
    say(f"THUDM's model: {n_params / 1e9:.3f}B parameters, written as a download: {metrics['checkpoint']}")

    tok = chatglm.load_tokenizer(src)
    base_rows = chatglm.finetune_hf_rows(tok, rows, 256, 512)  # lora.yaml's max_input/output_length
    lengths = [len(r["input_ids"]) for r in base_rows]
    metrics["data"] = {
        "samples": len(base_rows),
        "mean_tokens": statistics.fmean(lengths),
        "mean_trained_tokens": statistics.fmean(sum(t != -100 for t in r["labels"]) for r in base_rows),
        "max_tokens": max(lengths),
    }
    batch = chatglm.padded_batch(tok, base_rows[:8])
    thudm_loss = losses.thudm_losses(model, batch, device, bf16=not tiny)
    say(f"data: {metrics['data']}; THUDM's loss on 8 samples: {thudm_loss}")
    started = phase(metrics, "thudm_tokenize_and_losses", started)

    from baseline import run_baseline

    from tunelab.recipes.lora.batching import epoch_order

    order = epoch_order(len(base_rows), 42, 0)
    save_partial(args.out, metrics)
    try:  # a failed baseline is recorded; the import and the recipe still run
        metrics["baseline"] = run_baseline(
            model,
            tok,
            [base_rows[i] for i in order],
            args.baseline_warmup if not tiny else 1,
            args.baseline_steps,
            tiny,
        )
    except Exception as e:  # noqa: BLE001
        metrics["baseline"] = {"error": hide(f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2500:]}")}
    phase(metrics, "baseline", started)
    del model
    gc.collect()
    if not tiny:
        torch.cuda.empty_cache()
        say(f"after the baseline this process holds {torch.cuda.memory_reserved() / 1e9:.2f} GB")
    say(f"baseline: { {k: v for k, v in metrics['baseline'].items() if k != 'losses'} }")
    return src, n_params, {"data": data, "batch": batch, "thudm_loss": thudm_loss, "rows": base_rows}


def imported_side(
    metrics: dict[str, Any], imported: Path, checks: dict[str, Any], tiny: bool, device: Any
) -> None:
    """The recipe's tokenization of the same file (the same ids as finetune_hf.py's?) and the losses."""
    import torch
    from transformers import AutoTokenizer

    from tunelab.recipes.lora.data import chat_format, tokenize_file

    tok = AutoTokenizer.from_pretrained(imported)
    samples = tokenize_file(checks["data"] / "train.json", tok, chat_format(tok), 256, 512).samples
    same = sum(
        s.input_ids == r["input_ids"] and s.labels == r["labels"]
        for s, r in zip(samples, checks["rows"], strict=True)
    )
    metrics["data"]["recipe_rows_identical_to_finetune_hf"] = same / len(samples)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=not tiny)

    metrics["loss_check"] = losses.imported_checks(
        imported, checks["thudm_loss"], checks["batch"], samples, tok.pad_token_id, device, autocast
    )
    gc.collect()
    if not tiny:
        torch.cuda.empty_cache()
    say(
        f"loss checks: {metrics['loss_check']}; "
        f"recipe rows identical to finetune_hf.py's: {same}/{len(samples)}"
    )


def tunelab_runs(
    args: argparse.Namespace, tiny: bool, data: Path, model_dir: Path, root: Path, began: float
) -> dict[str, Any]:
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
            say(f"tunelab {mode}: { {k: v for k, v in result.items() if k not in ('losses', 'start')} }")
    return runs


def main() -> int:
    args = parse_args()
    began = time.perf_counter()
    if args.out:
        HIDE[str(args.out.resolve())] = HIDE[str(args.out)] = "OUT"

    import torch

    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu" if tiny else "cuda")
    if tiny:
        torch.set_num_threads(min(2, torch.get_num_threads()))
        args.baseline_steps, args.steps, args.warmup, args.samples = 6, 4, 1, 200
    root = scratch(args, tiny)
    metrics: dict[str, Any] = {"environment": environment(device)}
    metrics["work_storage"] = (
        "tmpfs (/dev/shm)" if str(root).startswith("/dev/shm") else "a local disk (temp dir)"
    )
    peak = matmul_peak(device)
    metrics["matmul_peak_tflops"] = peak / 1e12 if peak else None
    say(f"{metrics['environment']}; matmul peak {metrics['matmul_peak_tflops']} TFLOP/s")

    src, n_params, checks = thudm_side(args, metrics, root, tiny, device)
    save_partial(args.out, metrics)
    imported = root / "imported"
    left = args.deadline - (time.perf_counter() - began)
    started = time.perf_counter()
    metrics["import"] = json.loads(hide(json.dumps(importing.run_import(src, imported, max(left - 30, 60)))))
    started = phase(metrics, "import", started)
    say(f"import: { {k: v for k, v in metrics['import'].items() if k != 'error'} }")
    runs: dict[str, Any] = {}
    if metrics["import"]["exit_code"] == 0:
        shutil.rmtree(src, ignore_errors=True)  # the recipe reads the imported copy only
        try:  # a failed check is recorded; the recipe still runs
            imported_side(metrics, imported, checks, tiny, device)
        except Exception as e:  # noqa: BLE001
            metrics["loss_check"] = {
                "error": hide(f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2500:]}")
            }
            say(f"imported model checks failed: {metrics['loss_check']['error']}")
        started = phase(metrics, "imported_model_checks", started)
        save_partial(args.out, metrics)
        runs = tunelab_runs(args, tiny, checks["data"], imported, root, began)
        phase(metrics, "tunelab_runs", started)
    else:
        say(f"the import failed ({metrics['import']['exit_code']}): {metrics['import'].get('error')}")
    metrics["tunelab"] = runs
    save_partial(args.out, metrics)
    if args.ddp and runs:
        metrics["data_parallel"] = data_parallel(
            args, tiny, runs.get("fast"), checks["data"], imported, root, began
        )
        save_partial(args.out, metrics)
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(imported, ignore_errors=True)
    if args.out:
        for log in root.glob("recipe-*.log"):  # with the machine's paths hidden, as in the result
            (args.out / log.name).write_text(hide(log.read_text()))
    if args.work is None:  # a scratch directory of our own (in /dev/shm on a GPU machine)
        shutil.rmtree(root, ignore_errors=True)
    metrics["seconds"] = time.perf_counter() - began
    return report(metrics, n_params, tiny, args.out, LOG)


if __name__ == "__main__":
    sys.exit(main())
