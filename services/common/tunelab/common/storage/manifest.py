"""Manifests: the list of files of a dataset version or environment (path, size, sha256, mode)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

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
    if (
        not path
        or path[0] == "/"
        or "\\" in path
        or "\0" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise InvalidArgument(f"{where}: path {path!r} must be relative, without '..', '\\\\' or './'")
    return path


def check_sha256(value: str, where: str) -> str:
    if len(value) != 64 or not HEX.issuperset(value):
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
        folders = {p.rsplit("/", i)[0] for p in seen for i in range(1, p.count("/") + 1)}
        clash = folders & seen
        if clash:
            name = min(clash)
            raise InvalidArgument(f"manifest: {name} is both a file and a folder of other files")

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
            "files": [
                {"path": f.path, "size": f.size, "sha256": f.sha256, "mode": f.mode} for f in self.files
            ],
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


def walk_files(root: Path, skip: Iterable[str] = ()) -> list[tuple[str, str, os.stat_result]]:
    """Regular files under ``root`` as (relative posix path, full path, stat), sorted by path;
    refuses symbolic links that point outside ``root``."""
    skipped = set(skip)
    out: list[tuple[str, str, os.stat_result]] = []
    base = str(root)
    root_real = os.path.realpath(base)
    pending = [(base, "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name in skipped:
                    continue
                rel = prefix + entry.name
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if target != root_real and not target.startswith(root_real + os.sep):
                        raise InvalidArgument(f"{rel}: symbolic link points outside {root} (to {target})")
                if entry.is_dir():
                    pending.append((entry.path, rel + "/"))
                    continue
                st = entry.stat()
                if stat.S_ISREG(st.st_mode):
                    out.append((rel, entry.path, st))
    out.sort(key=lambda item: item[0])
    return out
