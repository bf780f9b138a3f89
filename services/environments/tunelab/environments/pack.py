"""Packing a built venv into layers: one deterministic tar.zst per installed distribution, plus one
for the venv's own files (interpreter links, pyvenv.cfg, activate scripts).

Why layers, and not one archive or a blob per file: a ChatGLM3-sized environment is ~20,000
files and ~600 MB. One archive must be re-packed and re-stored whole after any change (seconds);
a blob per file means 20,000 object-store writes cold. A layer per distribution is ~150 blobs,
packed in parallel cold, and after a one-package change only that package's layer (and the
small venv layer) is new. Layers are deterministic (sorted members, fixed owner and mtime), so
equal content gives an equal blob and the blob store dedups it.
"""

from __future__ import annotations

import csv
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from tunelab.environments.spec import canonical_name

# 1980-01-01, the zip epoch: wheels carry no better time, and a fixed one keeps layers reproducible.
FIXED_MTIME = 315532800
VENV_LAYER = "venv"
SKIP = {".lock"}


@dataclass(frozen=True)
class Layer:
    name: str  # "six==1.17.0" or "venv"
    sha256: str
    size: int  # packed
    unpacked: int
    files: int


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise FileNotFoundError(f"{venv} has no lib/python3*/site-packages")
    return found[0]


def installed_distributions(venv: Path) -> dict[str, list[str]]:
    """``{"six==1.17.0": [paths relative to the venv]}`` from each distribution's RECORD."""
    root = os.path.abspath(venv)
    site = site_packages(Path(root))
    out: dict[str, list[str]] = {}
    for info in sorted(site.glob("*.dist-info")):
        name, _, version = info.name[: -len(".dist-info")].rpartition("-")
        paths: list[str] = []
        with (info / "RECORD").open(newline="") as record:
            for row in csv.reader(record):
                if not row:
                    continue
                full = os.path.normpath(os.path.join(site, row[0]))
                if full.startswith(root + os.sep) and os.path.lexists(full):
                    paths.append(os.path.relpath(full, root))
        out[f"{canonical_name(name)}=={version}"] = sorted(set(paths))
    return out


def remaining_paths(venv: Path, claimed: Iterable[str]) -> list[str]:
    """The venv layer: every file and link of ``venv`` not in ``claimed``, and empty directories
    (the others are made when their files are unpacked), so it does not depend on what is installed."""
    taken = set(claimed)
    out = []
    for dirpath, dirnames, filenames in os.walk(venv):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, venv)
            if rel in taken or name in SKIP:
                continue
            if os.path.isdir(full) and not os.path.islink(full) and os.listdir(full):
                continue
            out.append(rel)
    return sorted(out)


def _member(full: str, rel: str) -> tarfile.TarInfo:
    """The tar header of one entry, from lstat alone (``gettarinfo`` also looks up user names)."""
    st = os.lstat(full)
    info = tarfile.TarInfo(rel)
    info.mtime = FIXED_MTIME
    if stat.S_ISREG(st.st_mode):
        info.size = st.st_size
        info.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(full)
        info.mode = 0o777
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        raise ValueError(f"{rel}: not a file, directory or symbolic link")
    return info


class _Sink:
    """Collects tar bytes and sends them through zstd in ~1 MiB pieces, hashing what is written."""

    PIECE = 1 << 20

    def __init__(self, raw: BinaryIO, level: int) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0
        self.buf = bytearray()
        self.zstd = zstandard.ZstdCompressor(level=level).compressobj()

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= self.PIECE:
            self._emit(self.zstd.compress(bytes(self.buf)))
            self.buf.clear()

    def close(self) -> None:
        self._emit(self.zstd.compress(bytes(self.buf)) + self.zstd.flush())
        self.buf.clear()

    def _emit(self, data: bytes) -> None:
        if data:
            self.sha.update(data)
            self.size += len(data)
            self.raw.write(data)


def pack_layer(name: str, root: Path, paths: list[str], out: Path, level: int = 1) -> Layer:
    """Writes ``paths`` (relative to ``root``) to ``out`` as a deterministic tar.zst.

    The tar stream is written here rather than by ``tarfile.TarFile`` (whose stream buffering
    costs more CPU than the compression); headers still come from ``TarInfo.tobuf``.
    """
    unpacked = 0
    with out.open("wb") as raw:
        sink = _Sink(raw, level)
        base = str(root)
        for rel in sorted(paths):
            full = os.path.join(base, rel)
            info = _member(full, rel)
            sink.write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
            if info.isreg():
                unpacked += info.size
                with open(full, "rb") as src:
                    copied = 0
                    while chunk := src.read(_Sink.PIECE):
                        sink.write(chunk)
                        copied += len(chunk)
                if copied != info.size:
                    raise OSError(f"{rel} changed size while it was packed")
                sink.write(b"\0" * (-info.size % tarfile.BLOCKSIZE))
        sink.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        sink.close()
    return Layer(name, sink.sha.hexdigest(), sink.size, unpacked, len(paths))
