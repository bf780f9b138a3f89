"""Per-attempt cgroups of the local executor: a job's CPU and memory limits, enforced by the kernel.

An attempt whose job has limits gets a cgroup of its own, a child of the trainer's own cgroup (so
what bounds the trainer still bounds its jobs) or of TUNELAB_CGROUP_PARENT, named
``tunelab-<instance>-<job>-<attempt>``: ``<instance>`` comes from the trainer's data directory, so
trainers sharing a cgroup keep apart and a restarted trainer finds what its predecessor left.

- cgroup v2: one directory; ``cpu.max`` (a quota per 100 ms period), ``memory.max``, and
  ``memory.swap.max`` = 0 where swap is accounted (past its limit a job is killed, not swapped).
- cgroup v1: a directory in the cpu hierarchy (``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``) and
  one in the memory hierarchy (``memory.limit_in_bytes``; ``memory.memsw.limit_in_bytes`` equal to
  it where swap is accounted).

The agent starts through ``sh``, which enters the cgroup (writing ``0`` to ``cgroup.procs`` moves
the writing process) and then becomes the agent (``exec``, same process): the agent and all it
starts are inside from their first instruction. A ``preexec_fn`` would do the same between fork
and exec, but it makes Python fork the whole trainer, gRPC's threads and their fork handlers
included, where without one it spawns the process (vfork) and runs no Python in the child.
"""

from __future__ import annotations

import errno
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from tunelab.trainer.quantities import cpus, memory

CONTROLLERS = ("cpu", "memory")
PERIOD_US = 100_000
MIN_QUOTA_US = 1_000  # the smallest CFS quota the kernel takes
V1_MEMORY = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
ENTER = 'while [ "$1" != -- ]; do echo 0 > "$1" || exit 125; shift; done; shift; exec "$@"'
ENTER_FAILED = 125  # the status of ``sh`` when it cannot enter the cgroup
PARENT_HINT = "set TUNELAB_CGROUP_PARENT to a cgroup for jobs, e.g. /tunelab-jobs"


class NoCgroups(Exception):
    """This machine gives the trainer no cgroups to limit jobs with; the message says why."""


@dataclass(frozen=True)
class Limits:
    """What an attempt may use, all its workers together; 0: no limit."""

    cpu_millis: int = 0
    memory_bytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.cpu_millis or self.memory_bytes)

    def __str__(self) -> str:
        parts = [cpus(self.cpu_millis)] if self.cpu_millis else []
        if self.memory_bytes:
            parts.append(f"{memory(self.memory_bytes)} memory")
        return ", ".join(parts)


@dataclass(frozen=True)
class Group:
    """One attempt's cgroup: its directory in each hierarchy (one on v2; cpu and memory on v1)."""

    version: int
    dirs: tuple[Path, ...]

    @property
    def name(self) -> str:
        return self.dirs[0].name

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the group: ``sh`` enters it, then execs ``argv`` (exit status
        ENTER_FAILED, with sh's message on stderr, where it cannot)."""
        return [
            "/bin/sh",
            "-c",
            ENTER,
            "tunelab-cgroup",
            *(str(d / "cgroup.procs") for d in self.dirs),
            "--",
            *argv,
        ]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            try:
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def oom_kills(self) -> int:
        """Processes the kernel killed at the memory limit (v1: Linux 4.13 or later)."""
        counters = "memory.events" if self.version == 2 else "memory.oom_control"
        found = re.search(r"^oom_kill (\d+)$", _read(self.dirs[-1] / counters), re.MULTILINE)
        return int(found.group(1)) if found else 0

    def memory_limit(self) -> int:
        value = _read(self.dirs[-1] / ("memory.max" if self.version == 2 else "memory.limit_in_bytes"))
        return int(value) if value.strip().isdigit() else 0

    def kill(self) -> None:
        """SIGKILLs every process in the group (at once with v2's cgroup.kill, Linux 5.14 or later)."""
        if self.version == 2 and (self.dirs[0] / "cgroup.kill").exists():
            _write(self.dirs[0] / "cgroup.kill", "1")
            return
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def remove(self) -> bool:
        """Removes the group; False while a process is left in it."""
        for d in self.dirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                return False
        return True


@dataclass(frozen=True)
class Cgroups:
    """Where this trainer's attempt cgroups go: the parent directory in each hierarchy."""

    version: int
    parents: tuple[Path, ...]
    prefix: str  # tunelab-<instance>-

    def create(self, job_id: str, attempt: int, limits: Limits) -> Group:
        group = self._group(f"{self.prefix}{job_id}-{attempt}")
        try:
            for d in group.dirs:
                d.mkdir(exist_ok=True)
            self._limit(group, limits)
        except OSError:
            group.remove()
            raise
        return group

    def _limit(self, group: Group, limits: Limits) -> None:
        """CPU as a quota per period; memory with no swap past it, where swap is accounted."""
        cpu, mem, v2 = group.dirs[0], group.dirs[-1], self.version == 2
        quota = max(limits.cpu_millis * PERIOD_US // 1000, MIN_QUOTA_US)
        if limits.cpu_millis and v2:
            _write(cpu / "cpu.max", f"{quota} {PERIOD_US}")
        elif limits.cpu_millis:
            _write(cpu / "cpu.cfs_period_us", str(PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(quota))
        if limits.memory_bytes:
            limit, swap = ("memory.max", "memory.swap.max") if v2 else V1_MEMORY
            _write(mem / limit, str(limits.memory_bytes))
            if (mem / swap).exists():  # v2: swap alone; v1: memory and swap together
                _write(mem / swap, "0" if v2 else str(limits.memory_bytes))

    def _group(self, name: str) -> Group:
        return Group(self.version, tuple(p / name for p in self.parents))

    def group_of(self, pid: int) -> Group | None:
        """The attempt cgroup of this trainer that process ``pid`` is in, if any."""
        for line in _read(Path(f"/proc/{pid}/cgroup")).splitlines():
            name = line.rsplit("/", 1)[-1]
            if name.startswith(self.prefix):
                return self._group(name)
        return None

    def sweep(self, keep: set[str]) -> None:
        """Removes this trainer's attempt cgroups that no process is in, but those named in ``keep``."""
        names: set[str] = set()
        for parent in self.parents:
            try:
                names.update(e.name for e in parent.iterdir() if e.name.startswith(self.prefix))
            except OSError:
                pass
        for name in names - keep:
            group = self._group(name)
            if not group.pids():
                group.remove()


def open_cgroups(instance: str, parent: str = "") -> Cgroups:
    """The cgroups attempts get on this machine; raises NoCgroups saying why there are none.

    ``parent``: the cgroup (a path in the hierarchy, made if missing) to create them in; empty:
    the trainer's own."""
    try:
        mounts = _mounts()
        own = _own_cgroups()
    except OSError as exc:
        raise NoCgroups(f"cannot read the cgroups of this process ({exc.strerror})") from None
    prefix = f"tunelab-{instance}-"
    unified = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if unified is not None and "" in own and set(CONTROLLERS) <= set(_read(unified.controllers).split()):
        return Cgroups(2, (_open_v2(unified, parent or own[""], made=bool(parent)),), prefix)
    v1 = {c: m for m in mounts if m.fstype == "cgroup" for c in CONTROLLERS if c in m.options}
    if not v1:
        raise NoCgroups("no cgroup hierarchy with the cpu and memory controllers is mounted")
    if missing := [c for c in CONTROLLERS if c not in v1]:
        raise NoCgroups(f"cgroup v1: the {missing[0]} controller is not mounted")
    parents = []
    for c in CONTROLLERS:
        where = v1[c].located(parent or own.get(c, "/"))
        if parent:
            _make(where)
        if not os.access(where, os.W_OK):
            raise NoCgroups(f"cgroup v1: {where} is not writable by the trainer (read-only, or not root)")
        parents.append(where)
    return Cgroups(1, tuple(parents), prefix)


def _open_v2(mount: _Mount, path: str, made: bool) -> Path:
    """The directory the attempt cgroups go in (``made`` if missing), with the cpu and memory
    controllers enabled for its children, in each cgroup from the mount down as v2 requires. A
    cgroup with processes of its own cannot have them (but the root): the trainer's own, unless it
    is the root, is refused before anything is written."""
    where = mount.located(path)
    if made:
        _make(where)
    if not os.access(where, os.W_OK):
        raise NoCgroups(f"cgroup v2: {where} is not writable by the trainer (read-only, or not root)")
    if where != mount.point and _read(where / "cgroup.procs").split():
        raise NoCgroups(
            f"cgroup v2: {where} has processes of its own, so it cannot hold job cgroups; {PARENT_HINT}"
        )
    chain = [where, *where.parents]
    for d in reversed(chain[: chain.index(mount.point) + 1] if mount.point in chain else [where]):
        control = d / "cgroup.subtree_control"
        if missing := [c for c in CONTROLLERS if c not in _read(control).split()]:
            try:
                _write(control, " ".join(f"+{c}" for c in missing))
            except OSError as exc:
                busy = ": processes run in it" if exc.errno == errno.EBUSY else ""
                raise NoCgroups(
                    f"cgroup v2: cannot enable the {' and '.join(missing)} controllers for the children "
                    f"of {d} ({exc.strerror}{busy}); {PARENT_HINT}"
                ) from None
    return where


@dataclass(frozen=True)
class _Mount:
    fstype: str
    root: str  # the hierarchy's path mounted here
    point: Path
    options: frozenset[str]

    @property
    def controllers(self) -> Path:
        return self.point / "cgroup.controllers"

    def located(self, path: str) -> Path:
        """The directory of the cgroup at ``path`` in the hierarchy."""
        root = self.root.rstrip("/")
        if path != self.root and not path.startswith(root + "/"):
            raise NoCgroups(f"the cgroup {path} lies outside what is mounted at {self.point} ({self.root})")
        return self.point / path[len(root) :].lstrip("/")


def _mounts() -> list[_Mount]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        mine, fs = left.split(), right.split()
        if len(mine) >= 6 and len(fs) >= 3 and fs[0] in ("cgroup", "cgroup2"):
            options = frozenset(fs[2].split(",")) | frozenset(mine[5].split(","))
            found.append(_Mount(fs[0], _unescape(mine[3]), Path(_unescape(mine[4])), options))
    return found


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup per controller ("" for v2's single hierarchy)."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if number == "0" and not controllers:
            own[""] = path
        for c in filter(None, controllers.split(",")):
            own[c] = path
    return own


def _make(where: Path) -> None:
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NoCgroups(f"cannot create the cgroup {where} (TUNELAB_CGROUP_PARENT): {exc.strerror}") from None


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    with path.open("w") as f:
        f.write(value)
