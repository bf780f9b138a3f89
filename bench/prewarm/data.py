"""The prewarm benchmark's folder: a few large files plus many small ones, from seeded random bytes
(incompressible, and the same bytes on every machine for the same parameters).

Layout::

    <root>/large/large-<i>.bin             LARGE_COUNT files of LARGE_BYTES x scale
    <root>/small/d<jj>/f<iiii>.bin         SMALL_COUNT x scale files of 1-100 KiB, 100 per folder
    <root>.json                            the parameters it was made with (reused when equal)
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import common as bc

LARGE_COUNT = 4
LARGE_BYTES = 200 * 1024 * 1024
SMALL_COUNT = 2000
SMALL_MIN = 1024
SMALL_MAX = 100 * 1024
SEED = 20240611
CHUNK = 8 * 1024 * 1024
PER_FOLDER = 100
FORMAT = 1


@dataclass(frozen=True)
class Spec:
    large_count: int
    large_bytes: int
    small_count: int
    small_min: int
    small_max: int
    seed: int
    format: int = FORMAT

    @classmethod
    def scaled(cls, scale: float) -> Spec:
        return cls(
            large_count=LARGE_COUNT,
            large_bytes=max(SMALL_MAX * 2, int(LARGE_BYTES * scale)),
            small_count=max(10, round(SMALL_COUNT * scale)),
            small_min=SMALL_MIN,
            small_max=SMALL_MAX,
            seed=SEED,
        )


@dataclass
class Folder:
    root: Path
    spec: Spec
    files: int
    bytes: int
    large_files: int
    large_bytes: int
    small_files: int
    small_bytes: int

    @property
    def small_dir(self) -> Path:
        return self.root / "small"

    def as_dict(self) -> dict[str, object]:
        return {
            "path": bc.repo_relative(str(self.root)),
            "files": self.files,
            "bytes": self.bytes,
            "mb": round(self.bytes / 1e6, 1),
            "large_files": self.large_files,
            "large_bytes": self.large_bytes,
            "small_files": self.small_files,
            "small_bytes": self.small_bytes,
            "small_bytes_share": round(self.small_bytes / self.bytes, 4) if self.bytes else 0,
            "spec": asdict(self.spec),
        }


def _census(root: Path, spec: Spec) -> Folder:
    large = [p.stat().st_size for p in (root / "large").iterdir()]
    small = [p.stat().st_size for p in (root / "small").rglob("*") if p.is_file()]
    return Folder(
        root,
        spec,
        len(large) + len(small),
        sum(large) + sum(small),
        len(large),
        sum(large),
        len(small),
        sum(small),
    )


def ensure_folder(root: Path, spec: Spec) -> tuple[Folder, bool]:
    """Makes ``root`` hold ``spec``'s folder (reusing an equal one); returns it and whether it was made."""
    stamp = root.with_name(root.name + ".json")
    if root.is_dir() and stamp.exists():
        try:
            if json.loads(stamp.read_text()) == asdict(spec):
                folder = _census(root, spec)
                if folder.large_files == spec.large_count and folder.small_files == spec.small_count:
                    return folder, False
        except (OSError, ValueError):
            pass
    stamp.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(spec.seed)
    (root / "large").mkdir(parents=True)
    for i in range(spec.large_count):
        left = spec.large_bytes
        with (root / "large" / f"large-{i}.bin").open("wb") as out:
            while left:
                n = min(CHUNK, left)
                out.write(rng.randbytes(n))
                left -= n
    for i in range(spec.small_count):
        subdir = root / "small" / f"d{i // PER_FOLDER:02d}"
        subdir.mkdir(parents=True, exist_ok=True)
        (subdir / f"f{i:04d}.bin").write_bytes(rng.randbytes(rng.randint(spec.small_min, spec.small_max)))
    stamp.write_text(json.dumps(asdict(spec)))
    return _census(root, spec), True
