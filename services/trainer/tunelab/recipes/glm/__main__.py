"""`python -m tunelab.recipes.glm import SRC DST` and `... export-adapter ADAPTER DST`.

`import` turns a ChatGLM3 checkpoint folder, as downloaded from THUDM (`.safetensors` or `.bin`
shards, fp16, remote code), into a transformers-native `glm` model folder with a fast tokenizer and
ChatGLM3's chat template; `tunelab model import` runs it as a job, so the result is a dataset version.
`export-adapter` writes a LoRA adapter trained on an imported model in ChatGLM3's original layout
(`query_key_value`), for serving the original checkpoint elsewhere.

Exit codes: 0 done; 2 bad input (the message names the file, tensor or key and what to do); 1 anything
unexpected. Progress lines go to stdout; a failure is also one JSON `failed` event there, which the job
agent turns into the job's reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tunelab.recipes.glm.errors import CheckpointError


class ProgressLines:
    """Prints `what: done/total (pct) rate, ETA` at most every `interval_s` and at each end."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < self.interval_s:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        pct = 100.0 * done / total if total else 100.0
        eta = (total - done) / rate if rate > 0 else 0.0
        print(
            f"{what}: {_size(done)} / {_size(total)} ({pct:.0f}%), {_size(int(rate))}/s, ETA {eta:.0f} s",
            flush=True,
        )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tunelab.recipes.glm", description=__doc__.split("\n\n")[0]
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    imp = verbs.add_parser("import", help="ChatGLM3 checkpoint folder -> native glm model folder")
    imp.add_argument("src", type=Path, help="the ChatGLM3 folder (config.json, tokenizer.model, weights)")
    imp.add_argument("dst", type=Path, help="an empty or absent folder for the imported model")
    imp.add_argument(
        "--source-ref", default="", help="what to record as the source (e.g. chatglm3-6b-thudm@1)"
    )
    exp = verbs.add_parser("export-adapter", help="adapter of an imported model -> ChatGLM3's layout")
    exp.add_argument("adapter", type=Path, help="a PEFT LoRA adapter folder trained on an imported model")
    exp.add_argument("dst", type=Path, help="an empty or absent folder for the exported adapter")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.verb == "import":
            from tunelab.recipes.glm.importer import import_checkpoint

            print(f"importing {args.source_ref or args.src} into {args.dst}", flush=True)
            record = import_checkpoint(
                args.src, args.dst, source_ref=args.source_ref, progress=ProgressLines()
            )
            weights = record.get("weights", {})
            print(
                f"imported {record['source']} as GlmForCausalLM: "
                f"{weights.get('parameters', '?')} parameters, {weights.get('tensors', '?')} tensors, "
                f"in {record['seconds']} s",
                flush=True,
            )
        else:
            from tunelab.recipes.glm.adapters import export_adapter

            export_adapter(args.adapter, args.dst)
            print(f"exported {args.adapter} in ChatGLM3's layout to {args.dst}", flush=True)
    except CheckpointError as e:
        print(json.dumps({"event": "failed", "time": round(time.time(), 3), "reason": str(e)}), flush=True)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
