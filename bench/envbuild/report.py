"""The "## envbuild" section of BENCHMARKS.md, written from the run's own numbers (only that section
is replaced; the others belong to other benchmarks)."""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

import common as bc

SECTION = "## envbuild"
PATH = bc.REPO / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\n"


def _s(value: Any) -> str:
    return "—" if value is None else f"{value:.2f} s"


def section(metrics: dict[str, Any], targets: dict[str, bc.Target], rounds: list[dict[str, Any]]) -> str:
    m = metrics
    machine = bc.machine_info()
    # Phases of the round whose cold build is the median one (the metrics' dicts are the last round's).
    middle = sorted(rounds, key=lambda r: r["tunelab_cold_s"])[len(rounds) // 2]
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in middle["tunelab_phases_s"].items())
    changed = ", ".join(f"{k} {v:.2f} s" for k, v in middle["one_changed_phases_s"].items())
    per_round = "; ".join(
        " / ".join(_s(r.get(f"{tool}_cold_s")) for tool in ("tunelab", "uv", "pip"))
        + f" ({', '.join(r['order'])})"
        for r in rounds
    )
    rows = [
        ("tool", "cold", "CPU s", "packages installed"),
        (
            "tunelab (create → READY: resolve, install, pack, store)",
            _s(m["tunelab_cold_s"]),
            f"{m['tunelab_cpu_s']:.1f}",
            str(m["tunelab_packages"]),
        ),
        ("raw `uv pip install`", _s(m["uv_cold_s"]), f"{m['uv_cpu_s']:.1f}", str(m["uv_packages"])),
        (
            "`pip install -r` (fresh venv)",
            _s(m.get("pip_cold_s")),
            f"{m['pip_cpu_s']:.1f}" if m.get("pip_cpu_s") is not None else "—",
            str(m.get("pip_packages", "—")),
        ),
    ]
    target_lines = "\n".join(
        f"- {t.metric} {t.op} {t.threshold:g}: {t.value} — {'met' if t.met else '**missed**'}"
        for t in targets.values()
    )
    date = _dt.date.today().isoformat()
    met = str(all(t.met for t in targets.values())).lower()
    return f"""{SECTION}

`make bench-envbuild` (`bench/envbuild/run.py`; `--repeat N` for medians of N rounds with the tool order
rotated, `--skip-pip` to leave pip out). The package set: ChatGLM3 `finetune_demo/requirements.txt` at
HEAD + `nltk` and `typer` (imported by `finetune_hf.py`, not listed); deepspeed and mpi4py excluded;
torch comes from the base environment (a copy of this CPython with only the torch CPU wheel and its
dependencies, made once into `bench/data/envbuild-base`) and is excluded from the build
(`include_system_site_packages`). Every tool starts with an empty cache of its own and downloads from
PyPI. tunelab is `python -m tunelab.environments` with a fresh data dir and the local store, timed from
CreateEnvironment to READY through the client (resolve, install, pack, store, manifest); raw uv is
`uv venv` + `uv pip install -r … --excludes …`; pip is `pip install -r` into a fresh
`venv --system-site-packages` (venv creation not timed), no pip config file, so PyPI only.
The build: {m["env_layers"]} zstd layers (one per distribution + the venv's own files),
{m["env_stored_bytes"] / 1e6:.0f} MB stored for {m["env_size_bytes"] / 1e6:.0f} MB on disk.

{date}, {machine["cores"]} vCPU {machine["cpu"]}, {machine["memory_gib"]} GiB, {machine["os"]};
{m["rounds"]} round(s), medians; load average {m["load_average_before"]} before and
{m["load_average_after"]} after (other sessions shared the machine); `met: {met}`:

{bc.fmt_table(rows)}

- Cold, per round, tunelab / uv / pip (order run): {per_round}.
- tunelab cold by phase (the median round): {phases}.
- Identical spec again under a new name: {_s(m["tunelab_identical_s"])}, a cache hit.
- One package changed (`{m["one_changed"]}`): {_s(m["tunelab_one_changed_s"])} (median round: {changed}).
- The built environment, pulled elsewhere, imports torch (from the base), peft, transformers, datasets,
  jieba, nltk, typer, ruamel.yaml and rouge_chinese: {m["imports_ok"]}.

Targets:
{target_lines}

Notes: "packing" includes storing (each layer is stored as soon as it is packed, in two processes).
tunelab's cold build costs more than raw uv because it resolves first (`uv pip compile
--generate-hashes`, which the key needs before anything is built) and then installs the lock
(`uv pip sync --require-hashes`), and packs and stores ~600 MB; downloads dominate and vary most
between rounds on this shared machine. pip installs fewer packages because it counts the base's
jinja2, filelock, fsspec and typing_extensions as installed; its CPU time is mostly byte-compiling.
The identical spec never reaches uv: the resolution of an identical spec is reused within
TUNELAB_RESOLVE_CACHE_TTL_S (600 s) and its build is stored. After one change only the changed
package is fetched from the index (the rest resolves offline from uv's cache), installed, packed and
stored; the other layers are reused.
"""


def write_section(
    metrics: dict[str, Any], targets: dict[str, bc.Target], rounds: list[dict[str, Any]]
) -> None:
    text = PATH.read_text() if PATH.exists() else HEADER
    new = section(metrics, targets, rounds)
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", flags=re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: new + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + new
    PATH.write_text(text.rstrip("\n") + "\n")
