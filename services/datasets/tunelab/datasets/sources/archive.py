"""Safe unpacking of zip and tar archives (plain, gzip, bzip2, xz) into a dataset's folder.

Every entry name is checked (no absolute paths, no ``..``, no NUL); links may not point outside the
folder (symlinks are created last, and each is verified by resolving it in the finished tree);
device files and FIFOs are refused; nothing is ever written through a symlink. Archive bombs are
stopped by three limits: entries, uncompressed bytes and the expansion ratio. A zip's declared
sizes are checked up front from its central directory; a tar's declared size is checked before
each member is written (a compressed tar cannot be sized without decompressing it); and the bytes
actually written are counted for both, since declared sizes can lie.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tunelab.common.errors import InvalidArgument, ResourceExhausted
from tunelab.datasets.sources.spec import FetchPolicy
from tunelab.datasets.sources.util import Progress, Throttle, UnsafePath, is_inside, safe_relpath

CHUNK = 1024 * 1024
# Small archives are not held to the ratio limit: a bomb is only a bomb when it is big.
RATIO_FLOOR_BYTES = 1024 * 1024
MAX_LINK_TARGET = 4096
SUFFIXES = (
    (".zip", "zip"),
    (".tar", "tar"),
    (".tar.gz", "tar"),
    (".tgz", "tar"),
    (".tar.bz2", "tar"),
    (".tbz2", "tar"),
    (".tbz", "tar"),
    (".tar.xz", "tar"),
    (".txz", "tar"),
)
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
DAMAGED = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)


def detect(path: Path, name: str) -> str | None:
    """'zip' or 'tar' when the file should be unpacked, else None.

    A name with an archive suffix must hold that kind of archive; a name without any suffix is
    sniffed by its magic bytes; any other name is kept as a file (a .bin may be a zip inside).
    """
    lower = name.lower()
    for suffix, kind in SUFFIXES:
        if lower.endswith(suffix):
            if _sniff(path) != kind:
                raise InvalidArgument(
                    f"{name} is named like a {suffix} archive but is not one (damaged, or an error page?): "
                    "check the URL, or set no_extract to keep the file as it is"
                )
            return kind
    if "." in name.strip("."):
        return None
    return _sniff(path)


def _sniff(path: Path) -> str | None:
    with path.open("rb") as f:
        head = f.read(4)
    if head in ZIP_MAGIC and zipfile.is_zipfile(path):
        return "zip"
    try:
        return "tar" if tarfile.is_tarfile(path) else None
    except (*DAMAGED, OSError):
        return None


def extract(path: Path, kind: str, dest: Path, policy: FetchPolicy, progress: Progress, *, label: str) -> int:
    """Unpacks the archive at ``path`` into ``dest``; returns the number of entries."""
    writer = _Writer(dest, policy, label, path.stat().st_size, progress)
    with _damaged_as_invalid(label):
        if kind == "zip":
            _extract_zip(path, writer)
        else:
            _extract_tar(path, writer)
    writer.finish()
    return writer.entries


@contextmanager
def _damaged_as_invalid(label: str) -> Iterator[None]:
    try:
        yield
    except DAMAGED as exc:
        raise InvalidArgument(f"archive {label} is damaged or unsupported ({exc}); check the file") from exc
    except OSError as exc:
        if exc.errno is not None:
            raise
        raise InvalidArgument(f"archive {label} is damaged ({exc}); check the file") from exc


def _extract_zip(path: Path, writer: _Writer) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        writer.declare_up_front(len(infos), sum(info.file_size for info in infos))
        for info in infos:
            name = writer.entry_name(info.filename)
            mode = info.external_attr >> 16
            if info.flag_bits & 0x1:
                raise writer.refuse(
                    info.filename, "it is encrypted (password-protected archives are not supported)"
                )
            if name is None or info.is_dir() or stat.S_ISDIR(mode):
                writer.add_dir(name)
            elif stat.S_ISLNK(mode):
                if info.file_size > MAX_LINK_TARGET:
                    raise writer.refuse(info.filename, "it is a symlink with an oversized target")
                writer.add_symlink(name, zf.read(info).decode("utf-8", "surrogateescape"))
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise writer.refuse(info.filename, "it is a device file, FIFO or socket")
            else:
                with zf.open(info) as src:
                    writer.add_file(name, src, mode, declared=info.file_size)


def _extract_tar(path: Path, writer: _Writer) -> None:
    with path.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tf:
        for member in tf:
            writer.count_entry()
            name = writer.entry_name(member.name)
            if member.isdir() or name is None:
                writer.add_dir(name)
            elif member.isreg():
                writer.declare(member.size)
                src = tf.extractfile(member)
                if src is None:
                    raise writer.refuse(member.name, "its contents cannot be read")
                with src:
                    writer.add_file(name, src, member.mode, declared=member.size)
            elif member.issym():
                writer.add_symlink(name, member.linkname)
            elif member.islnk():
                writer.add_hardlink(name, member.linkname)
            elif member.ischr() or member.isblk() or member.isfifo():
                raise writer.refuse(member.name, "it is a device file or FIFO")
            else:
                raise writer.refuse(member.name, f"its entry type {member.type!r} is not supported")


class _Writer:
    """Writes entries under ``dest``, enforcing the names, links and limits."""

    def __init__(
        self, dest: Path, policy: FetchPolicy, label: str, compressed: int, progress: Progress
    ) -> None:
        self.root = dest.resolve()
        self.policy = policy
        self.label = label
        self.compressed = max(compressed, 1)
        self.progress = Throttle(progress)
        self.entries = 0
        self.declared = 0
        self.declared_total = 0
        self.written = 0
        self.files: set[str] = set()
        self.links: list[tuple[str, str]] = []

    # -- limits -------------------------------------------------------------------------------

    def declare_up_front(self, entries: int, size: int) -> None:
        """A zip's central directory: every entry and declared size, before anything is written."""
        self.entries = entries
        self._check_entries()
        self.declared_total = size
        self._check_bytes(size, "declares")

    def count_entry(self) -> None:
        self.entries += 1
        self._check_entries()

    def declare(self, size: int) -> None:
        self.declared += size
        self._check_bytes(self.declared, "declares")

    def _check_entries(self) -> None:
        limit = self.policy.max_archive_files
        if self.entries > limit:
            raise ResourceExhausted(
                f"archive {self.label} has more than {limit} entries (TUNELAB_MAX_ARCHIVE_FILES); "
                "raise the limit if the archive is genuine"
            )

    def _check_bytes(self, size: int, verb: str) -> None:
        limit = self.policy.max_archive_bytes
        if size > limit:
            raise ResourceExhausted(
                f"archive {self.label} {verb} more than {limit} bytes uncompressed "
                "(TUNELAB_MAX_ARCHIVE_BYTES); raise the limit if the archive is genuine"
            )
        ratio = self.policy.max_archive_ratio
        if size > RATIO_FLOOR_BYTES and size > ratio * self.compressed:
            raise ResourceExhausted(
                f"archive {self.label} {verb} {size} bytes from {self.compressed} compressed, more than "
                f"{ratio:g} times its size (TUNELAB_MAX_ARCHIVE_RATIO): it looks like an archive bomb; "
                "raise the limit if the archive is genuine"
            )

    # -- names --------------------------------------------------------------------------------

    def refuse(self, raw: str, reason: str) -> InvalidArgument:
        return InvalidArgument(
            f"archive {self.label} has an unsafe or unsupported entry {raw!r}: {reason}; "
            "tunelab refuses the whole archive, repack it without that entry"
        )

    def entry_name(self, raw: str) -> str | None:
        try:
            return safe_relpath(raw)
        except UnsafePath as exc:
            raise self.refuse(raw, str(exc)) from None

    def _target(self, name: str) -> Path:
        """The path for ``name``, with its parent folders made; never through a symlink."""
        path = self.root
        parts = name.split("/")
        for part in parts[:-1]:
            path = path / part
            if path.is_symlink():
                raise self.refuse(name, f"it lies inside the symlink {path.relative_to(self.root)}")
            if path.exists() and not path.is_dir():
                raise self.refuse(name, f"{path.relative_to(self.root)} is a file, not a folder")
            path.mkdir(exist_ok=True)
        target = path / parts[-1]
        if target.is_symlink() or target.is_dir():
            raise self.refuse(name, "another entry of the same name is a folder or a link")
        return target

    # -- entries ------------------------------------------------------------------------------

    def add_dir(self, name: str | None) -> None:
        if name is None:
            return
        path = self.root
        for part in name.split("/"):
            path = path / part
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                raise self.refuse(name, f"{path.relative_to(self.root)} is not a folder")
            path.mkdir(exist_ok=True)

    def add_file(self, name: str, src: IO[bytes], mode: int, *, declared: int) -> None:
        target = self._target(name)
        target.unlink(missing_ok=True)  # a later entry replaces an earlier one, never writes into its inode
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(target, flags, 0o755 if mode & 0o100 else 0o644)
        count = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK):
                count += len(chunk)
                self.written += len(chunk)
                if count > declared:
                    raise self.refuse(name, f"it holds more bytes than the {declared} it declares")
                self._check_bytes(self.written, "unpacks to")
                out.write(chunk)
                self.progress(f"unpacking {self.label}", self.written, self.declared_total)
        self.files.add(name)

    def add_hardlink(self, name: str, target_raw: str) -> None:
        try:
            target = safe_relpath(target_raw)
        except UnsafePath as exc:
            raise self.refuse(
                name, f"it is a hard link whose target {target_raw!r} is unsafe: {exc}"
            ) from None
        if target not in self.files:
            raise self.refuse(name, f"it is a hard link to {target_raw!r}, which is not a file earlier in it")
        source = self.root / target
        size = source.stat().st_size
        self.written += size
        self._check_bytes(self.written, "unpacks to")
        path = self._target(name)
        path.unlink(missing_ok=True)
        try:
            os.link(source, path, follow_symlinks=False)
        except OSError:
            shutil.copyfile(source, path, follow_symlinks=False)
        self.files.add(name)

    def add_symlink(self, name: str, target: str) -> None:
        """Remembers a symlink; :meth:`finish` creates them all once every file is in place."""
        if not target or target.startswith("/") or "\x00" in target:
            raise self.refuse(name, f"it is a symlink to {target!r}, an absolute or empty path")
        lexical = os.path.normpath(os.path.join(os.path.dirname(name), target))
        if lexical == ".." or lexical.startswith("../"):
            raise self.refuse(name, f"it is a symlink to {target!r}, outside the folder")
        self.links.append((name, target))

    def finish(self) -> None:
        created: list[Path] = []
        for name, target in self.links:
            path = self._target(name)
            if path.exists():
                raise self.refuse(name, "another entry of the same name exists")
            os.symlink(target, path)
            created.append(path)
        for path in created:
            if not is_inside(os.path.realpath(path), self.root):
                raise self.refuse(
                    str(path.relative_to(self.root)), "it is a symlink that resolves outside the folder"
                )
        self.progress(f"unpacked {self.label}", self.written, self.written, force=True)
