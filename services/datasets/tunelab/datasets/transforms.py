"""Built-in dataset transforms: a function from an input directory to an output directory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tunelab.common.errors import InvalidArgument

SPLITS = ("train.json", "dev.json")


def advertisegen_to_conversations(src: Path, out: Path) -> None:
    """AdvertiseGen ``{"content", "summary"}`` JSON lines → ChatGLM3's ``conversations`` format.

    Reads ``train.json`` and ``dev.json`` wherever they are under ``src`` (the archive has an
    ``AdvertiseGen/`` folder) and writes them at the top of ``out``, one object per line:
    ``{"conversations": [{"role": "user", ...}, {"role": "assistant", ...}]}``.
    """
    found = {p.name: p for p in sorted(src.rglob("*.json")) if p.name in SPLITS}
    if "train.json" not in found:
        raise InvalidArgument(
            f"advertisegen-to-conversations: no train.json in the input (has: {_listing(src)})"
        )
    for name, path in found.items():
        rel = path.relative_to(src).as_posix()
        written = 0
        with path.open(encoding="utf-8") as fin, (out / name).open("w", encoding="utf-8") as fout:
            for lineno, line in enumerate(fin, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidArgument(
                        f"{rel} line {lineno}: not JSON ({exc.msg} at column {exc.colno})"
                    ) from None
                if not isinstance(row, dict):
                    raise InvalidArgument(
                        f"{rel} line {lineno}: expected a JSON object, got {type(row).__name__}"
                    )
                for key in ("content", "summary"):
                    if not isinstance(row.get(key), str) or not row[key]:
                        raise InvalidArgument(
                            f"{rel} line {lineno}: field {key!r} is missing or not a non-empty string"
                        )
                sample = {
                    "conversations": [
                        {"role": "user", "content": row["content"]},
                        {"role": "assistant", "content": row["summary"]},
                    ]
                }
                fout.write(json.dumps(sample, ensure_ascii=False) + "\n")
                written += 1
        if written == 0:
            raise InvalidArgument(f"{rel}: no samples (the file is empty)")


def _listing(root: Path) -> str:
    names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()][:10]
    return ", ".join(names) or "no files"


TRANSFORMS: dict[str, Callable[[Path, Path], None]] = {
    "advertisegen-to-conversations": advertisegen_to_conversations,
}
