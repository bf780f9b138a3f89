"""The import as users run it, `python -m tunelab.recipes.glm import SRC DST`, timed, with its peak memory.

The importer runs under a small wrapper process whose only child it is, so the wrapper's
`getrusage(RUSAGE_CHILDREN).ru_maxrss` is the importer's own peak resident set (memory-mapped shard
pages it touched included), not that of anything else this benchmark started. Throughput is the
source's safetensors bytes over the importer's wall time (interpreter start, tokenizer conversion and
its verification included); the source was just written, so it is read from memory (tmpfs or the page
cache) either way: this measures the conversion, not a disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
_WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "print(json.dumps({'exit_code': code, 'seconds': time.perf_counter() - t,"
    " 'max_rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
)


def _safetensors_bytes(folder: Path) -> list[int]:
    return [p.stat().st_size for p in sorted(folder.glob("*.safetensors"))]


def run_import(src: Path, dst: Path, timeout: float) -> dict[str, Any]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO / "services" / "trainer"), os.environ.get("PYTHONPATH", "")]),
    )
    importer = [sys.executable, "-m", "tunelab.recipes.glm", "import", str(src), str(dst)]
    cmd = [sys.executable, "-c", _WRAPPER, *importer]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return {"exit_code": -9, "error": f"timed out after {timeout:.0f} s: {str(e.stdout or '')[-1000:]}"}
    lines = proc.stdout.strip().splitlines()
    try:
        measured = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"exit_code": proc.returncode or -1, "error": (proc.stdout + proc.stderr)[-1500:]}
    source = _safetensors_bytes(src)
    result: dict[str, Any] = {
        "command": "python -m tunelab.recipes.glm import SRC DST",
        "exit_code": measured["exit_code"],
        "seconds": measured["seconds"],
        "source_bytes": sum(source),
        "source_shards": len(source),
        "largest_shard_bytes": max(source),
        "gb_per_second": sum(source) / 1e9 / measured["seconds"],
        "peak_rss_bytes": measured["max_rss_kib"] * 1024,
        "progress": [line for line in lines[:-1] if not line.startswith("weights:")][-4:],
    }
    result["peak_rss_over_largest_shard"] = result["peak_rss_bytes"] / result["largest_shard_bytes"]
    if measured["exit_code"] != 0:
        result["error"] = (proc.stdout + proc.stderr)[-1500:]
        return result
    provenance = json.loads((dst / "tunelab-import.json").read_text())
    written = _safetensors_bytes(dst)
    result |= {
        "importer_seconds": provenance.get("seconds"),
        "output_bytes": sum(written),
        "output_shards": len(written),
        "parameters": provenance.get("weights", {}).get("parameters"),
        "dtype": provenance.get("weights", {}).get("dtype"),
        "tokenizer_vocab_size": provenance.get("tokenizer", {}).get("vocab_size"),
    }
    return result
