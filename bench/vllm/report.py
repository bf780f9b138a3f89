"""What the vLLM benchmark records: the card, driver and versions, the adapter, the targets, the
result file (``bench/common.write_result``), a printed summary, and the copy into ``--out``."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import shlex
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import common as bc

DISTRIBUTIONS = (
    "vllm",
    "torch",
    "transformers",
    "peft",
    "tokenizers",
    "fastapi",
    "uvicorn",
    "pydantic",
    "grpcio",
    "protobuf",
    "httptools",
    "uvloop",
    "nvidia-ml-py",
)
LOG_FILES = (
    "run.log",
    "upstream.log",
    "gateway.log",
    "recipe.log",
    "basemodel.log",
    "gateway-metrics.txt",
    "upstream-metrics.txt",
)
MAX_COPY_BYTES = 8 * 1024 * 1024


def gpu_info() -> dict[str, Any] | None:
    """The first GPU and the driver, from NVML; None without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001  (no package, no driver, no GPU)
        return None
    try:

        def text(v: str | bytes) -> str:
            return v.decode() if isinstance(v, bytes) else v

        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return {
            "name": text(pynvml.nvmlDeviceGetName(h)),
            "count": pynvml.nvmlDeviceGetCount(),
            "memory_gib": round(pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**30, 1),
            "driver": text(pynvml.nvmlSystemGetDriverVersion()),
            "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
        }
    except pynvml.NVMLError as exc:
        return {"error": str(exc)}
    finally:
        pynvml.nvmlShutdown()


def environment(engine: str) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {"engine": engine, "gpu": gpu_info(), "python": platform.python_version(), "versions": versions}


def adapter_info(adapter: Path) -> dict[str, Any]:
    config = json.loads((adapter / "adapter_config.json").read_text())
    keys = ("r", "lora_alpha", "target_modules", "base_model_name_or_path", "peft_type")
    return {
        **{k: config.get(k) for k in keys},
        "files": sorted(p.name for p in adapter.iterdir() if p.is_file()),
    }


def recipe_run(log: Path) -> dict[str, Any]:
    """The recipe's start and done events and its first and last training loss, from its log."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith('{"event"'):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    start: dict[str, Any] = next((e for e in events if e["event"] == "start"), {})
    losses = [e["loss"] for e in events if e["event"] == "train" and "loss" in e]
    return {
        "device": start.get("device"),
        "dtype": start.get("dtype"),
        "trainable_params": start.get("trainable_params"),
        "steps": max((e.get("step", 0) for e in events), default=0),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "done": any(e["event"] == "done" for e in events),
    }


def get_text(url: str, timeout_s: float = 10) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.read().decode(errors="replace")  # type: ignore[no-any-return]
    except (urllib.error.URLError, OSError):
        return ""


def get_json(url: str) -> Any:
    text = get_text(url)
    try:
        return json.loads(text)
    except ValueError:
        return {"error": f"{url} answered {text[:200]!r}"}


def prompts(n: int) -> list[str]:
    """A fixed prompt set: the contents (``key#value*…``) of generated AdvertiseGen records, each as
    ChatGLM3's user turn and generation prompt (``checks.chatglm3_prompt``)."""
    from checks import chatglm3_prompt

    from tunelab.recipes import advertisegen_sample

    return [chatglm3_prompt(r["content"]) for r in advertisegen_sample.generate(n, seed=1)]


def brief(check: dict[str, Any]) -> str:
    keys = ("status", "models", "events", "chunks", "chars", "snippet", "base", "adapter", "error", "seconds")
    return ", ".join(f"{k}={check[k]!r}" for k in keys if check.get(k) not in (None, ""))


def public_command(argv: list[str]) -> str:
    """The command as run, with no path of the machine it ran on."""
    shown = ["python3", "bench/vllm/run.py"]
    for arg in argv:
        shown.append(f"<{Path(arg).name}>" if arg.startswith("/") else arg)
    return shlex.join(shown)


def targets(result: dict[str, Any], engine: str) -> dict[str, bc.Target]:
    out: dict[str, bc.Target] = {}
    for level, data in (result.get("benchmark") or {}).items():
        cmp_ = data.get("comparison") or {}
        c = level.removeprefix("c")
        out[f"throughput_ratio_{level}"] = bc.Target(
            f"gateway / direct output tokens per second at concurrency {c}",
            ">=",
            0.97,
            cmp_.get("throughput_ratio"),
        )
        both = (data.get("shared") or {}).get("comparison")
        out[f"ttft_p50_added_{level}"] = bc.Target(
            f"time to first token p50 the gateway adds at concurrency {c} (ms)"
            + (", both paths in the same rounds" if both else ", separate rounds"),
            "<=",
            2.0,
            (both or cmp_).get("ttft_p50_added_ms"),
        )
    out["errors"] = bc.Target(
        "errors during the run (a failed step, a fallback taken)",
        "<=",
        0,
        float(len(result.get("errors", []))),
    )
    checks = result.get("checks") or []
    out["checks"] = bc.Target(
        "functional checks passed through the gateway",
        ">=",
        max(len(checks), 7),
        float(sum(1 for c in checks if c.get("ok"))),
    )
    if engine == "vllm":
        gm = result.get("gateway_metrics") or {}
        out["gpu_series"] = bc.Target(
            "tunelab_gpu_* series on the gateway's /metrics", ">=", 8, float(gm.get("gpu_series", 0))
        )
        used = (gm.get("gpu_values") or {}).get("tunelab_gpu_memory_used_bytes")
        out["gpu_memory_used"] = bc.Target(
            "GPU memory in use by NVML on the gateway's /metrics while vLLM runs (GiB)",
            ">=",
            1.0,
            None if used is None else round(used / 2**30, 2),
        )
        um = result.get("upstream_metrics") or {}
        out["vllm_series"] = bc.Target(
            "vllm: series on vLLM's own /metrics", ">=", 1, float(um.get("series", 0))
        )
    return out


def scrub(value: Any, hide: dict[str, str]) -> Any:
    """``value`` with each path in ``hide`` (longest first) replaced by its placeholder."""
    if isinstance(value, str):
        for path in sorted(hide, key=len, reverse=True):
            value = value.replace(path, hide[path])
        return value
    if isinstance(value, dict):
        return {k: scrub(v, hide) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, hide) for v in value]
    return value


def write(
    result: dict[str, Any], args: argparse.Namespace, work: Path, argv: list[str], hide: dict[str, str]
) -> tuple[Path, bool]:
    """Writes the result (no path of this machine in it: each of ``hide`` is replaced); its path and
    whether every target was met."""
    path = args.result or (
        bc.RESULTS_DIR / "vllm.json" if args.engine == "vllm" else work / "vllm-rehearsal.json"
    )
    goals = targets(result, args.engine)
    metrics: dict[str, Any] = {"levels": result.pop("benchmark", None)}
    for key, t in goals.items():
        metrics[key] = t.value
    settings = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k
        not in (
            "out",
            "work",
            "result",
            "python",
            "upstream_python",
            "base_model",
            "adapter",
            "fallback_adapter",
        )
    }
    settings["base_model_given"] = args.base_model is not None
    settings["adapter_given"] = args.adapter is not None
    bc.RESULTS_DIR = path.parent  # write_result writes RESULTS_DIR/<name>.json
    extra = scrub({"command": public_command(argv), "settings": settings, **result}, hide)
    written = bc.write_result(path.stem, scrub(metrics, hide), goals, extra)
    return written, all(t.met for t in goals.values())


def summary(path: Path) -> list[str]:
    """Lines for the console: the card, each check, each target, each error."""
    data = json.loads(path.read_text())
    lines = []
    env = data.get("environment") or {}
    gpu = env.get("gpu") or {}
    versions = env.get("versions") or {}
    lines.append(
        f"card {gpu.get('name')} driver {gpu.get('driver')}; vllm {versions.get('vllm')} "
        f"torch {versions.get('torch')}"
    )
    for c in data.get("checks", []):
        lines.append(f"{'ok  ' if c.get('ok') else 'FAIL'} {c.get('check')}")
    for key, t in (data.get("targets") or {}).items():
        lines.append(f"{'met   ' if t['met'] else 'MISSED'} {key}: {t['value']} (target {t['target']})")
    for err in data.get("errors", []):
        lines.append(f"error: {err}")
    return lines


def copy_out(out: Path, result: Path, logs: Path) -> None:
    """The result and the logs, each cut to its last 8 MiB: eight files at most."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result, out / result.name)
    for name in LOG_FILES:
        src = logs / name
        if src.is_file():
            with src.open("rb") as f:
                size = src.stat().st_size
                f.seek(max(0, size - MAX_COPY_BYTES))
                (out / name).write_bytes(f.read())
