"""Turns the runs into the result: steady-state throughput, MFU, memory, speed-ups and the targets."""

from __future__ import annotations

import json
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import common as bc


def spread(values: list[float]) -> dict[str, float] | None:
    """min / median / max / relative standard deviation of the measured steps' times."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "relative_stdev": statistics.stdev(values) / mean if mean else 0.0,
    }


def summarize_recipe(result: dict[str, Any], warmup: int) -> dict[str, Any]:
    records = result.pop("records")
    train = [r for r in records if r["event"] == "train"]
    start = next((r for r in records if r["event"] == "start"), None)
    measured = [r for r in train if r["step"] > warmup]
    if not measured:
        return result
    tokens, seconds = sum(r["tokens"] for r in measured), sum(r["window_seconds"] for r in measured)
    peaks = [r.get("gpu_memory_gb") or 0 for r in train]
    reserved = [r.get("gpu_memory_reserved_gb") or 0 for r in train]
    return result | {
        "steps_measured": len(measured),
        "warmup_steps": warmup,
        "first_step_seconds": train[0]["window_seconds"],
        "step_seconds": seconds / len(measured),
        "step_seconds_spread": spread([r["window_seconds"] for r in measured]),
        "real_tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "samples_per_second": sum(r["samples_per_second"] * r["window_seconds"] for r in measured) / seconds,
        "peak_allocated_bytes": int(max(peaks) * 2**30),
        "peak_reserved_bytes": int(max(reserved) * 2**30),
        "losses": [r["loss"] for r in train],
        "start": start,
    }


def scrub_command(argv: list[str]) -> str:
    """The command line as anyone would type it: `python3 bench/train/run.py ...`, with no path of the
    machine that ran it (the interpreter, --out and --work values, the checkout)."""
    words, hide = ["python3"], {"--out": "OUT", "--work": "WORK", "--chatglm-code": "CODE"}
    for i, arg in enumerate(argv):
        name, eq, _ = arg.partition("=")
        if eq and name in hide:
            words.append(f"{name}={hide[name]}")
        elif i > 0 and argv[i - 1] in hide:
            words.append(hide[argv[i - 1]])
        else:
            words.append(bc.repo_relative(str(Path(arg).resolve())) if i == 0 else bc.repo_relative(arg))
    return shlex.join(words)


def curve_agreement(baseline: list[float], tunelab: list[float], samples_per_step: float) -> dict[str, Any]:
    """Mean loss over (about) the same first samples: the baseline's steps of 4 vs tunelab's packed steps."""
    steps = max(1, round(4 * len(baseline) / samples_per_step))
    ours = tunelab[:steps]
    noise = (statistics.pstdev(baseline) ** 2 / len(baseline)) ** 0.5
    if len(ours) > 1:
        noise = (noise**2 + statistics.pstdev(ours) ** 2 / len(ours)) ** 0.5
    diff = statistics.fmean(ours) - statistics.fmean(baseline)
    return {
        "baseline_steps": len(baseline),
        "tunelab_steps": len(ours),
        "baseline_mean_loss": statistics.fmean(baseline),
        "tunelab_mean_loss": statistics.fmean(ours),
        "difference": diff,
        "noise": noise,
        "difference_in_noise_units": abs(diff) / max(noise, 1e-9),
    }


def report(metrics: dict[str, Any], n_params: int, tiny: bool, out: Path | None, log: list[str]) -> int:
    peak = (metrics["matmul_peak_tflops"] or 0) * 1e12
    base = metrics["baseline"]
    metrics["n_params"] = n_params

    def derive(side: dict[str, Any]) -> None:
        tps = side.get("tokens_per_second")
        if tps is None:
            return
        side["mfu"] = 4 * n_params * tps / peak if peak else None
        side["speedup"] = tps / base["tokens_per_second"] if base.get("tokens_per_second") else None
        for kind in ("allocated", "reserved"):
            if f"peak_{kind}_bytes" in side:
                side[f"peak_{kind}_gb"] = side[f"peak_{kind}_bytes"] / 1e9

    derive(base)
    for side in metrics["tunelab"].values():
        derive(side)
    not_run = []
    ddp = metrics.pop("data_parallel", None)
    if ddp is None:
        not_run.append("2-GPU run: not asked for (run.py --ddp on a machine with 2 GPUs)")
    elif "skipped" in ddp or ddp.get("exit_code") != 0 or not ddp.get("tokens_per_second"):
        why = (
            ddp.get("skipped") or f"failed ({ddp.get('exit_code')}): {ddp.get('error', 'no steps measured')}"
        )
        not_run.append(f"2-GPU run: {why}")
    else:
        derive(ddp)
        one = metrics["tunelab"]["fast"]
        if ddp.get("mfu") is not None:
            ddp["mfu"] /= ddp["processes"]  # per GPU: each has the measured peak
        ddp["scaling_efficiency"] = ddp["tokens_per_second"] / (ddp["processes"] * one["tokens_per_second"])
        metrics["data_parallel"] = ddp
    fast, low = metrics["tunelab"].get("fast", {}), metrics["tunelab"].get("low_memory", {})
    checks, imp = metrics.get("loss_check", {}), metrics.get("import", {})
    if fast.get("losses") and fast.get("start") and base.get("losses"):
        metrics["loss_curves"] = curve_agreement(
            base["losses"], fast["losses"], fast["start"]["samples_per_step"]
        )
    targets = {
        "fast_speedup": bc.Target("fast real tokens/s over the baseline's", ">=", 10, fast.get("speedup")),
        "fast_mfu": bc.Target(
            "fast MFU (4N x tokens/s over the measured matmul peak)", ">=", 0.5, fast.get("mfu")
        ),
        "low_memory_speedup": bc.Target(
            "low_memory real tokens/s over the baseline's", ">=", 6, low.get("speedup")
        ),
        "low_memory_peak_gb": bc.Target(
            "low_memory peak GPU memory reserved (GB, 1e9 bytes)", "<=", 20, low.get("peak_reserved_gb")
        ),
        "loss_check": bc.Target(
            "same samples, imported model: |tunelab loss - transformers loss| / loss (bf16 on a GPU)",
            "<=",
            0.01,
            checks.get("recipe_vs_transformers", {}).get("relative_difference"),
        ),
        "thudm_vs_imported_fp32": bc.Target(
            "same batch in fp32: |imported model's loss - THUDM's model's loss| / loss",
            "<=",
            1e-4,
            checks.get("thudm_vs_imported", {}).get("relative_difference_fp32"),
        ),
        "import_peak_rss_gb": bc.Target(
            "peak RSS of the import (GB) <= 2 x the largest shard + 1 GB (interpreter, torch, tokenizer)",
            "<=",
            round(2 * imp.get("largest_shard_bytes", 0) / 1e9 + 1, 3),
            imp["peak_rss_bytes"] / 1e9 if imp.get("peak_rss_bytes") else None,
        ),
        "same_rows": bc.Target(
            "share of samples the recipe tokenizes exactly as finetune_hf.py does (ids and labels)",
            ">=",
            1,
            metrics["data"].get("recipe_rows_identical_to_finetune_hf"),
        ),
        "loss_curves": bc.Target(
            "first steps' mean loss, tunelab fast vs baseline, in noise units",
            "<=",
            3,
            metrics.get("loss_curves", {}).get("difference_in_noise_units"),
        ),
        "packing_isolated": bc.Target(
            "fast packs with varlen attention proven isolated by the recipe's probe (1 = yes)",
            ">=",
            1,
            float((fast.get("start") or {}).get("packing") == "packed/varlen") if fast else None,
        ),
    }
    if "data_parallel" in metrics:
        targets["scaling_efficiency"] = bc.Target(
            "fast on 2 GPUs (torchrun): real tokens/s over 2x the 1-GPU fast run's, same rows per GPU",
            ">=",
            0.85,
            metrics["data_parallel"]["scaling_efficiency"],
        )
    extra: dict[str, Any] = {"not_run": not_run, "log": log}
    name = "train-tiny" if tiny else "train"
    if tiny:
        bc.RESULTS_DIR = out or Path(tempfile.mkdtemp(prefix="bench-train-tiny-"))
    path = bc.write_result(name, metrics, targets, extra)
    body = json.loads(path.read_text())
    body["command"] = scrub_command(sys.argv)
    path.write_text(json.dumps(body, indent=2) + "\n")
    rows = [("", "tokens/s", "step s", "peak GB (reserved)", "MFU", "x baseline")]
    sides = [("baseline", base), *[(f"tunelab {m}", s) for m, s in metrics["tunelab"].items()]]
    if "data_parallel" in metrics:
        sides.append(("tunelab fast, 2 GPUs", metrics["data_parallel"]))
    for label, side in sides:
        rows.append(
            (
                label,
                f"{side.get('tokens_per_second') or 0:,.0f}",
                f"{side.get('step_seconds') or 0:.3f}",
                f"{side.get('peak_reserved_gb') or 0:.1f}",
                f"{side.get('mfu') or 0:.3f}",
                f"{side.get('speedup') or 0:.2f}",
            )
        )
    print(bc.fmt_table(rows))
    for key, target in targets.items():
        print(f"{'MET ' if target.met else 'MISS'} {key}: {target.value} {target.op} {target.threshold}")
    if imp:
        print(
            f"import: {imp.get('source_bytes', 0) / 1e9:.2f} GB in {imp.get('seconds', 0):.1f} s = "
            f"{imp.get('gb_per_second', 0):.2f} GB/s, peak RSS {imp.get('peak_rss_bytes', 0) / 1e9:.2f} GB "
            f"({imp.get('peak_rss_over_largest_shard', 0):.2f} x the largest shard)"
        )
    for line in not_run:
        print(f"not run: {line}")
    print(f"wrote {path}")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        if path.parent != out:
            shutil.copy(path, out / path.name)
        (out / f"{name}.log").write_text("\n".join(log) + "\n")
    return 0
