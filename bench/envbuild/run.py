"""Environment build benchmark: tunelab's environments service against `pip install -r` into a fresh
venv and raw `uv pip install`, side by side in the same run, on the ChatGLM3 finetune_demo set.

    make bench-envbuild                          # one round
    .venv/bin/python bench/envbuild/run.py --repeat 3 --skip-pip   # medians, without pip

The package set: ChatGLM3 finetune_demo/requirements.txt at HEAD (jieba, ruamel_yaml,
rouge_chinese, jupyter, datasets, peft, deepspeed, mpi4py) + nltk and typer (imported by
finetune_hf.py, not listed), with deepspeed and mpi4py left out, and torch taken from the base
environment: a copy of this machine's CPython with only torch (CPU wheel from /opt/wheels) and its
dependencies installed, made once into bench/data/envbuild-base ("the base image").

Each round, every tool starts cold (its own empty cache directory):
1. tunelab: `python -m tunelab.environments` (local store, fresh data dir, TUNELAB_PYTHONS = the
   base), create → READY through the client, so resolving, installing, packing and storing count;
   spec: the requirements with `exclude = [deepspeed, mpi4py, torch]`, include_system_site_packages;
2. raw uv: `uv venv --system-site-packages` + `uv pip install -r … --excludes …` (deepspeed, mpi4py, torch);
3. pip: `python -m venv --system-site-packages` (untimed) + `pip install -r` (requirements without
   deepspeed and mpi4py; torch is satisfied by the base), no pip config, PyPI only;
then, tunelab only: the identical spec again under a new name (create → READY), and the spec with one
package pinned to another version. The built environment is pulled elsewhere and imports
torch, peft, datasets, jieba, nltk, typer, ruamel.yaml and rouge_chinese.

Writes bench/results/envbuild.json and the "## envbuild" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common as bc
from report import write_section
from tunelab_side import Tunelab

REQUIREMENTS = """jieba>=0.42.1
ruamel_yaml>=0.18.6
rouge_chinese>=1.0.3
jupyter>=1.0.0
datasets>=2.18.0
peft>=0.10.0
deepspeed==0.16.2
mpi4py>=3.1.5
nltk
typer
"""
EXCLUDE = ["deepspeed", "mpi4py", "torch"]
IMPORTS = "import torch, peft, datasets, jieba, nltk, typer, ruamel.yaml, rouge_chinese, transformers"
BASE_DIR = bc.BENCH_DIR / "data" / "envbuild-base"
UV = bc.REPO / ".venv" / "bin" / "uv"
TORCH_WHEELS = Path("/opt/wheels")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without pip/uv settings; pip reads no config file (PyPI only)."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "VIRTUAL_ENV", "PYTHON"))}
    return {**keep, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def make_base() -> Path:
    """A CPython with only torch and its dependencies in site-packages (made once)."""
    python = BASE_DIR / "bin" / "python3.11"
    if (BASE_DIR / ".ready").exists():
        return python
    src = Path(os.path.realpath(sys.executable)).parents[1]
    shutil.rmtree(BASE_DIR, ignore_errors=True)
    print(f"making the base environment in {BASE_DIR} (once) ...", flush=True)
    shutil.copytree(src, BASE_DIR, symlinks=True, ignore=shutil.ignore_patterns("site-packages"))
    site = BASE_DIR / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(python), "-m", "ensurepip"], check=True, env=clean_env())
    wheels = sorted(TORCH_WHEELS.glob("torch-*.whl"))
    torch = [str(wheels[-1])] if wheels else ["torch", "--index-url", "https://download.pytorch.org/whl/cpu"]
    # The machine's pip config (its local indexes) is fine here: this is setup, not measured.
    subprocess.run([str(python), "-m", "pip", "install", "-q", *torch], check=True)
    (BASE_DIR / ".ready").write_text("torch\n")
    return python


def run_uv(base: Path, work: Path) -> tuple[bc.Timed, int]:
    """``uv venv`` + ``uv pip install`` (the two timed together), cold."""
    (work / "req.txt").write_text(REQUIREMENTS)
    (work / "excl.txt").write_text("\n".join(EXCLUDE) + "\n")
    env = clean_env(UV_CACHE_DIR=str(work / "uv-cache"), UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")
    started = time.perf_counter()
    venv = bc.run_timed(
        [str(UV), "venv", "-q", "--system-site-packages", "--python", str(base), str(work / "uv-env")], env
    )
    cmd = [str(UV), "pip", "install", "--python", str(work / "uv-env" / "bin" / "python")]
    result = bc.run_timed([*cmd, "-r", str(work / "req.txt"), "--excludes", str(work / "excl.txt")], env)
    result.seconds = time.perf_counter() - started
    result.cpu_seconds += venv.cpu_seconds
    return result, len(re.findall(r"^ \+ ", result.output, flags=re.M))


def run_pip(base: Path, work: Path) -> tuple[bc.Timed, int]:
    lines = [line for line in REQUIREMENTS.splitlines() if not line.startswith(("deepspeed", "mpi4py"))]
    (work / "req-pip.txt").write_text("\n".join(lines) + "\n")
    env = clean_env(PIP_CACHE_DIR=str(work / "pip-cache"))
    subprocess.run(
        [str(base), "-m", "venv", "--system-site-packages", str(work / "pip-env")], check=True, env=env
    )
    pip = work / "pip-env" / "bin" / "pip"
    result = bc.run_timed(
        [str(pip), "install", "--isolated", "-r", str(work / "req-pip.txt")], env, timeout=1800
    )
    installed = re.search(r"Successfully installed (.*)", result.output)
    return result, len(installed.group(1).split()) if installed else 0


def run_tunelab(base: Path, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Tunelab(work / "tunelab", base) as tl:
        cold = tl.build("chatglm3", REQUIREMENTS, EXCLUDE)
        out["tunelab_cold_s"] = cold.seconds
        out["tunelab_phases_s"] = cold.phases
        out["tunelab_packages"] = cold.env.package_count
        out["env_size_bytes"] = cold.env.size_bytes
        out["env_stored_bytes"] = sum(layer.size_bytes for layer in cold.env.artifact.layers)
        out["env_layers"] = len(cold.env.artifact.layers)
        out["tunelab_cpu_s"] = cold.cpu_seconds
        again = tl.build("chatglm3-again", REQUIREMENTS, EXCLUDE)
        out["tunelab_identical_s"] = again.seconds
        out["identical_was_cache_hit"] = again.env.cache_hit
        pin = tl.one_changed_pin(cold.env.lock, "nltk")
        changed = tl.build("chatglm3-changed", REQUIREMENTS.replace("nltk\n", f"{pin}\n"), EXCLUDE)
        out["tunelab_one_changed_s"] = changed.seconds
        out["one_changed"] = pin
        out["one_changed_phases_s"] = changed.phases
        out["imports_ok"], out["import_check"] = tl.check_imports("chatglm3", work / "pulled", IMPORTS)
    return out


def one_round(base: Path, work: Path, skip_pip: bool, index: int) -> dict[str, Any]:
    """One round; the tools' order rotates from round to round (the network and the machine vary)."""
    out: dict[str, Any] = {}
    tools = ["tunelab", "uv"] + ([] if skip_pip else ["pip"])
    order = tools[index % len(tools) :] + tools[: index % len(tools)]
    for tool in order:
        if tool == "tunelab":
            out.update(run_tunelab(base, work))
            continue
        timed, packages = run_uv(base, work) if tool == "uv" else run_pip(base, work)
        if timed.returncode != 0:
            raise RuntimeError(f"{tool} failed:\n{timed.output[-3000:]}")
        out[f"{tool}_cold_s"], out[f"{tool}_cpu_s"], out[f"{tool}_packages"] = (
            timed.seconds,
            timed.cpu_seconds,
            packages,
        )
    out["order"] = order
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="rounds; metrics are medians")
    parser.add_argument("--skip-pip", action="store_true", help="leave pip out (it takes a minute)")
    args = parser.parse_args()
    base = make_base()
    rounds = []
    load_before = os.getloadavg()
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="tunelab-bench-envbuild-", dir=bc.BENCH_DIR / "data") as tmp:
            print(f"round {i + 1}/{args.repeat} ...", flush=True)
            rounds.append(one_round(base, Path(tmp), args.skip_pip, i))
            print({k: v for k, v in rounds[-1].items() if k.endswith("_s")}, flush=True)
    metrics = summarize(rounds)
    metrics["load_average_before"] = [round(x, 2) for x in load_before]
    metrics["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    targets = {
        "cold_vs_pip": bc.Target("pip_cold_s / tunelab_cold_s", ">=", 5, metrics.get("speedup_vs_pip")),
        "cold_vs_uv": bc.Target("tunelab_cold_s / uv_cold_s", "<=", 2, metrics.get("ratio_vs_uv")),
        "identical": bc.Target("tunelab_identical_s", "<=", 0.5, metrics["tunelab_identical_s"]),
        "one_changed": bc.Target("tunelab_one_changed_s", "<=", 3, metrics["tunelab_one_changed_s"]),
    }
    extra = {"package_set": package_set_note(), "rounds": rounds}
    path = bc.write_result("envbuild", metrics, targets, extra)
    write_section(metrics, targets, rounds)
    print(f"wrote {path} and the envbuild section of BENCHMARKS.md")
    for name, t in targets.items():
        print(f"  {name}: {t.value} {t.op} {t.threshold}: {'met' if t.met else 'MISSED'}")
    return 0


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if key in r]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            metrics[key] = bc.rounded(bc.median(values))
        else:
            metrics[key] = values[-1]
    if metrics.get("pip_cold_s"):
        metrics["speedup_vs_pip"] = bc.rounded(metrics["pip_cold_s"] / metrics["tunelab_cold_s"], 2)
    metrics["ratio_vs_uv"] = bc.rounded(metrics["tunelab_cold_s"] / metrics["uv_cold_s"], 2)
    metrics["rounds"] = len(rounds)
    return metrics


def package_set_note() -> str:
    return (
        "ChatGLM3 finetune_demo/requirements.txt at HEAD + nltk + typer; deepspeed and mpi4py excluded; "
        "torch from the base environment (torch CPU wheel in a copy of this CPython), excluded from the "
        "build; PyPI for everything else"
    )


if __name__ == "__main__":
    sys.exit(main())
