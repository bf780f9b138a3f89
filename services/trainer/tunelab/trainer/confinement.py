"""The local executor's attempt cgroups: made with the job's limits before the agent starts,
known by the attempt's reference (the agent's ``pid:start-time``) while it runs, removed when it ends.

An attempt's cgroup goes when its agent ends (the executor's thread that waits for the agent calls
``ended``), on a kill, or, for agents of an earlier run of the trainer, by a sweep once they have
ended (at start, before each new attempt, and whenever an agent is found gone).
"""

from __future__ import annotations

import logging
import signal
import time
from hashlib import sha256
from pathlib import Path

from tunelab.trainer.cgroups import ENTER_FAILED, Cgroups, Group, Limits, NoCgroups, open_cgroups
from tunelab.trainer.quantities import memory

log = logging.getLogger(__name__)
DROP_TRIES = 40  # x 50 ms: time for the processes of a killed cgroup to exit


class Confinement:
    def __init__(self, runs_dir: Path, parent: str = "") -> None:
        """``runs_dir`` tells this trainer's cgroups from others'; ``parent``: TUNELAB_CGROUP_PARENT."""
        self._groups: dict[str, Group] = {}  # attempt reference → its cgroup
        self._mine: set[str] = set()  # cgroups of agents this process started and has not seen end
        self._silent: dict[str, tuple[str, str]] = {}  # agents that could not report: (reason, why)
        self.cgroups: Cgroups | None = None
        self.unavailable = ""  # why there are no cgroups
        try:
            self.cgroups = open_cgroups(sha256(str(runs_dir.resolve()).encode()).hexdigest()[:8], parent)
        except NoCgroups as exc:
            self.unavailable = str(exc)
            log.warning("resources not enforced: %s", exc)
            return
        self.cgroups.sweep(keep=set())
        where = ", ".join(str(p) for p in self.cgroups.parents)
        log.info("jobs' CPU and memory limits hold: cgroup v%d, under %s", self.cgroups.version, where)

    def create(self, job_id: str, attempt: int, limits: Limits, workers: int) -> tuple[Group | None, str]:
        """The attempt's cgroup (None where it cannot have one) and the line for the job's log."""
        if self.cgroups is None:
            return None, f"resources not enforced: {self.unavailable}"
        self.cgroups.sweep(keep=self._mine)
        try:
            group = self.cgroups.create(job_id, attempt, limits)
        except OSError as exc:
            log.warning("resources of %s not enforced: cannot create its cgroup: %s", job_id, exc)
            return None, f"resources not enforced: cannot create the attempt's cgroup ({exc})"
        self._mine.add(group.name)
        together = f", all {workers} workers together" if workers > 1 else ""
        return group, f"limits: {limits}{together} (cgroup v{self.cgroups.version})"

    def started(self, ref: str, group: Group) -> None:
        self._groups[ref] = group

    def group(self, ref: str, running: bool) -> Group | None:
        """The attempt's cgroup: known, or, while its agent runs (``running``: the pid is still
        the agent's), read from the process (an agent of an earlier run of the trainer)."""
        group = self._groups.get(ref)
        if group is None and running and self.cgroups is not None:
            group = self.cgroups.group_of(int(ref.partition(":")[0]))
            if group is not None:
                self._groups[ref] = group
        return group

    def verdict(self, ref: str, running: bool) -> tuple[str, str]:
        """(reason, message) where the attempt's cgroup tells how it went wrong: OOMKilled (the
        kernel killed part of it at its memory limit), or ExecutorError (the agent could not
        start in it); ("", "") otherwise."""
        group = self.group(ref, running)
        if group is not None and (why := _oom(group)):
            return "OOMKilled", why
        return self._silent.get(ref, ("", ""))

    def ended(self, ref: str, code: int) -> None:
        """The agent ended by itself with status ``code``; a silent end is kept for ``verdict``."""
        group = self._groups.get(ref)
        if group is None:
            return
        if code == ENTER_FAILED:
            where = f"{group.dirs[0]}; the agent's log in the trainer's runs directory says why"
            self._silent[ref] = ("ExecutorError", f"the agent could not enter its cgroup {where}")
        elif code == -signal.SIGKILL and (why := _oom(group)):  # read while the cgroup is still there
            self._silent[ref] = ("OOMKilled", why)
        self.drop(ref)

    def drop(self, ref: str) -> None:
        """Kills what is left in the attempt's cgroup and removes it (one that does not empty is
        left to a later sweep)."""
        group = self._groups.get(ref)
        if group is None:
            return
        for _ in range(DROP_TRIES):
            group.kill()
            if group.remove():
                break
            time.sleep(0.05)
        else:
            log.warning("the cgroup %s still has processes; it goes once they end", group.dirs[0])
        self._mine.discard(group.name)
        self._groups.pop(ref, None)

    def forget(self, ref: str) -> None:
        """The attempt was killed: what ``verdict`` kept of it is no longer asked for."""
        self._silent.pop(ref, None)

    def sweep(self, everything: bool = False) -> None:
        """Removes this trainer's empty cgroups; but for ``everything`` (when no attempt starts),
        not those of agents it has just started, which may not have entered them yet."""
        if self.cgroups is not None:
            self.cgroups.sweep(keep=set() if everything else self._mine)


def _oom(group: Group) -> str:
    if not group.oom_kills():
        return ""
    return (
        f"exceeded its memory limit of {memory(group.memory_limit())}: the kernel killed its largest "
        "process; give it more with --resources memory=…"
    )
