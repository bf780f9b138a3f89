"""The launcher of a job's command under the local executor: a filesystem view of the job's own.

    python -I .../tunelab/cli/agent/sandbox.py --report-fd N --spec JSON -- COMMAND...

It runs as a process of its own because a private mount namespace can only be entered by a
single-threaded process (the agent has threads). It enters one (``unshare``; in a user namespace
of its own where it is not root), makes the working directory exist there, binds the staging tree
onto it and each mount's staging directory onto the mount's path (parents first; inputs
read-only, so writing to them fails with EROFS while an output nested in an input stays
writable), then changes to the working directory and becomes the command. Every mount vanishes
with the namespace: nothing is created on the machine.

A working directory whose path does not exist is made for the job only: its deepest existing
ancestor is shadowed by a tmpfs that holds the ancestor's entries (each bound back in place,
symbolic links copied) and the missing directories; the tmpfs is then made read-only, as a pod's
root filesystem is. Where that ancestor is ``/``, the tmpfs becomes the job's root (``chroot``).

Setup failures go to the report pipe as ``mount`` or ``exec`` and a message; the pipe closes
without a word when the command starts. ``--probe`` only checks that a namespace can be entered.
Only the standard library is used: this starts as fast as Python does.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import sys
from typing import Any

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 1024, 2048, 4096, 16384
MS_UNBINDABLE, MS_PRIVATE, MS_RELATIME = 1 << 17, 1 << 18, 1 << 21
# Flags a read-only remount keeps (in a user namespace the kernel refuses to drop them).
KEPT_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)
_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "mount" or "exec"


def _call(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731 - four arguments, one rule
    _call(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def enter_namespace() -> bool:
    """Enters a private mount namespace; returns whether this is real root (not a user namespace)."""
    if _libc.unshare(CLONE_NEWNS) == 0:
        real_root = True
    else:
        uid, gid = os.geteuid(), os.getegid()
        _call(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare (a mount namespace)")
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:  # the same ids inside: files keep their owners
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
        real_root = False
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    return real_root


def read_only(path: str) -> None:
    """Remounts the bind mount at ``path`` read-only, keeping its other flags."""
    kept = os.statvfs(path).f_flag
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY
    for st_flag, ms_flag in KEPT_FLAGS:
        if kept & st_flag:
            flags |= ms_flag
    mount(None, path, None, flags)


def bind(source: str, target: str, ro: bool = False) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    if ro:
        read_only(target)


class View:
    """The job's filesystem as it is being built: ``root`` is "" until the job gets a new root."""

    def __init__(self, scratch: str, real_root: bool) -> None:
        self.scratch, self.real_root, self.root = scratch, real_root, ""

    def at(self, path: str) -> str:
        return self.root + path

    def make_dir(self, path: str) -> None:
        """Makes ``path`` a directory in the job's view, without touching the machine's."""
        if os.path.isdir(path):
            return
        existing = path
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise NotADirectoryError(20, "Not a directory", existing)
        missing = os.path.relpath(path, existing)
        anchor = os.path.realpath(existing)
        if anchor == "/":
            anchor = self.root = self._new_root()
        else:
            self._shadow(anchor, anchor)
        os.makedirs(os.path.join(anchor, missing))
        read_only(anchor)  # as a pod's read-only root: nothing else is written beside the mounts

    def _shadow(self, original: str, target: str, unbindable: bool = False) -> None:
        """Mounts a tmpfs on ``target`` holding ``original``'s entries, each bound back."""
        fd = os.open(original, os.O_PATH | os.O_DIRECTORY)  # reaches them under the tmpfs
        try:
            names = os.listdir(original)
            like = os.stat(original)
            options = f"mode={stat.S_IMODE(like.st_mode):o}"
            if self.real_root:  # in a user namespace other owners are not mapped
                options += f",uid={like.st_uid},gid={like.st_gid}"
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
            if unbindable:
                mount(None, target, None, MS_UNBINDABLE)
            for name in names:
                source, dest = f"/proc/self/fd/{fd}/{name}", os.path.join(target, name)
                info = os.lstat(source)
                if stat.S_ISLNK(info.st_mode):
                    os.symlink(os.readlink(source), dest)
                    continue
                if stat.S_ISDIR(info.st_mode):
                    os.mkdir(dest)
                else:
                    os.close(os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                mount(source, dest, None, MS_BIND | MS_REC)
        finally:
            os.close(fd)

    def _new_root(self) -> str:
        """A tmpfs root for the job holding "/"'s entries; unbindable, so that the entry bound
        into it that holds it (the scratch area's) does not hold it again."""
        root = os.path.join(self.scratch, "root")
        os.makedirs(root, exist_ok=True)
        self._shadow("/", root, unbindable=True)
        return root


def build(spec: dict[str, Any], real_root: bool) -> str:
    """Builds the job's view from ``spec`` (``work``, ``tree``, ``scratch`` and ``binds``: [path,
    source, read-only] in order); returns the job's new root ("" for the machine's)."""
    work = spec["work"]
    view = View(spec["scratch"], real_root)
    try:
        view.make_dir(work)
    except OSError as exc:
        raise SetupError("mount", f"cannot make the working directory {work} for the job: {exc}") from None
    for target, source, ro in [(work, spec["tree"], False), *spec["binds"]]:
        try:
            bind(source, view.at(target), ro)
        except OSError as exc:
            raise SetupError("mount", f"cannot mount {source} at {target}: {exc}") from None
    return view.root


def run(spec: dict[str, Any], argv: list[str]) -> None:
    """Builds the view and becomes the command (returns only by raising SetupError)."""
    try:
        real_root = enter_namespace()
    except OSError as exc:
        raise SetupError("mount", f"no private mount namespace for the job: {exc}") from None
    root = build(spec, real_root)
    if root:
        os.chroot(root)
    os.chdir(spec["work"])
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        raise SetupError("exec", f"cannot run {argv[0]!r}: {exc.strerror}") from None


def main(args: list[str]) -> int:
    if args == ["--probe"]:
        try:
            enter_namespace()
        except OSError as exc:
            print(exc, flush=True)
            return 1
        return 0
    sep = args.index("--")
    options = dict(zip(args[:sep:2], args[1:sep:2], strict=True))
    report = int(options["--report-fd"])
    os.set_inheritable(report, False)  # closes as the command starts: "started"
    try:
        run(json.loads(options["--spec"]), args[sep + 1 :])
    except SetupError as exc:
        os.write(report, f"{exc.kind}\n{exc}".encode())
    except Exception as exc:  # noqa: BLE001 - the agent reports it as the attempt's failure
        os.write(report, f"mount\ncannot set up the job's filesystem: {type(exc).__name__}: {exc}".encode())
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
