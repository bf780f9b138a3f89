"""Manifests: the list of files of a dataset version or environment (path, size, sha256, mode)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from tunelab.common.errors import InvalidArgument

HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    mode: int = 0o644

    @property
    def executable(self) -> bool:
        return bool(self.mode & 0o111)


def check_relative_path(path: str, where: str = "manifest") -> str:
    """Returns ``path`` when it is a clean relative POSIX path; raises naming it otherwise."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or path != p.as_posix() or "\\" in path or "\0" in path:
        raise InvalidArgument(f"{where}: path {path!r} must be relative, without '..', '\\\\' or './'")
    return path


def check_sha256(value: str, where: str) -> str:
    if len(value) != 64 or not set(value) <= HEX:
        raise InvalidArgument(f"{where}: {value!r} is not a lower-case hex sha256")
    return value


@dataclass
class Manifest:
    files: list[FileEntry]
    source: dict[str, str] = field(default_factory=dict)
    created_time: str = ""

    def __post_init__(self) -> None:
        self.files = sorted(self.files, key=lambda f: f.path)
        seen: set[str] = set()
        for f in self.files:
            check_relative_path(f.path)
            check_sha256(f.sha256, f"manifest entry {f.path}")
            if f.size < 0:
                raise InvalidArgument(f"manifest entry {f.path}: negative size {f.size}")
            if f.path in seen:
                raise InvalidArgument(f"manifest: duplicate path {f.path!r}")
            seen.add(f.path)
        paths = seen
        for f in self.files:
            parent = PurePosixPath(f.path).parent
            while parent.as_posix() != ".":
                if parent.as_posix() in paths:
                    raise InvalidArgument(f"manifest: {parent} is both a file and the folder of {f.path}")
                parent = parent.parent

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def digest(self) -> str:
        """sha256 of the file list alone: equal content gives an equal digest."""
        canon = json.dumps([[f.path, f.size, f.sha256, f.mode] for f in self.files], separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def to_json(self) -> bytes:
        body = {
            "format": 1,
            "digest": self.digest(),
            "created_time": self.created_time,
            "source": self.source,
            "files": [asdict(f) for f in self.files],
        }
        return json.dumps(body, indent=1, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str = "manifest") -> Manifest:
        try:
            body = json.loads(data)
            files = [FileEntry(**f) for f in body["files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"{where} is not a tunelab manifest: {exc}") from exc
        return cls(files, dict(body.get("source", {})), str(body.get("created_time", "")))

    def unique_blobs(self) -> dict[str, int]:
        return {f.sha256: f.size for f in self.files}


def file_mode(st: os.stat_result) -> int:
    """Keeps only whether a file is executable: 0o755 or 0o644."""
    return 0o755 if st.st_mode & stat.S_IXUSR else 0o644


def walk_files(root: Path, skip: Iterable[str] = ()) -> list[tuple[str, Path, os.stat_result]]:
    """Regular files under ``root`` as (relative posix path, path, stat); refuses links that escape."""
    skipped = set(skip)
    out: list[tuple[str, Path, os.stat_result]] = []
    root_real = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skipped)
        for name in sorted(filenames):
            if name in skipped:
                continue
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                target = full.resolve()
                if not target.is_relative_to(root_real):
                    raise InvalidArgument(f"{rel}: symbolic link points outside {root} (to {target})")
            st = full.stat()
            if stat.S_ISREG(st.st_mode):
                out.append((rel, full, st))
    return out
