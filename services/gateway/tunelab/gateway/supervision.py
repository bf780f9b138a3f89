"""Supervised embedded replicas: an engine process that exits (killed, crashed, or ended on its own)
is started again, after an exponential backoff, and the replica says what happened meanwhile.

Each replica is an :class:`EngineSlot`: the engine process it runs now and its history (restarts,
crashes in a row, when it was last healthy). :class:`Supervisor` looks at every slot on each check
(the deployment's health loop, or the wait of a load) and moves it on:

* an engine that exited after it had answered healthy is started again after ``backoff_s``,
  doubling with each crash up to ``backoff_max_s``; once it has been healthy for ``stable_s`` the
  next crash starts from ``backoff_s`` again. Its log is not quoted: what a healthy engine last
  wrote (a loading progress bar) says nothing about why it died.
* an engine that exits before it ever answered healthy crashed while loading: the last line it
  wrote is quoted, and after ``load_tries`` such starts in a row the replica is given up, at once
  when the engine itself said it cannot load (its exit statuses 2 and 3: trying again cannot help).
  A deployment whose every replica was given up fails (:class:`EngineFailed`).

A restarted engine gets its old port back when it is free (the replica keeps its URL), and a new
API key. Nothing restarts once the slots were stopped (an update or a delete of the deployment).

Workload replicas are not supervised here: the trainer restarts their jobs (``workloads.py``).
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from tunelab.common.errors import FailedPrecondition
from tunelab.gateway.engines import EngineProcess
from tunelab.gateway.specs import ReplicaStatus

log = logging.getLogger(__name__)

# The engine's own exit statuses for "cannot start": bad arguments, a model or adapter it cannot load.
GIVE_UP_EXITS = frozenset({2, 3})

Launch = Callable[[int, int], EngineProcess]  # (replica index, port or 0 for any) → a started engine


class EngineFailed(FailedPrecondition):
    """Every embedded replica of a deployment was given up."""


@dataclass(frozen=True)
class RestartPolicy:
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    stable_s: float = 300.0
    load_tries: int = 3
    load_timeout_s: float = 600.0  # a restarted engine that never answers healthy is stopped after it


@dataclass
class EngineSlot:
    """One embedded replica, over the engine processes it has run."""

    index: int
    engine: EngineProcess
    started: float  # time.monotonic() when ``engine`` started
    restarts: int = 0
    restart_reason: str = ""  # why the last restart
    backoff_step: int = 0  # crashes since it was last stable
    load_crashes: int = 0  # starts in a row that ended before answering healthy
    healthy_since: float | None = None  # since its engine started; None: not yet
    restart_at: float | None = None  # waiting to be started again, until then
    note: str = ""  # why it is not healthy (a crash, a restart)
    gave_up: str = ""  # why it will not be started again


class EngineReplicas:
    """The embedded replicas of one load of a deployment. Restarts and ``stop`` exclude each other,
    so that no engine starts after the replicas were stopped."""

    def __init__(self, name: str, launch: Launch, count: int) -> None:
        self.name = name
        self._launch = launch
        self._lock = threading.Lock()
        self._stopped = False
        self.slots: list[EngineSlot] = []
        try:
            for i in range(count):
                self.slots.append(EngineSlot(i, launch(i, 0), time.monotonic()))
        except BaseException:
            self.stop()
            raise

    @property
    def engines(self) -> list[EngineProcess]:
        return [s.engine for s in self.slots]

    def relaunch(self, slot: EngineSlot, port: int) -> bool:
        """Starts ``slot``'s engine again; False when the replicas were stopped."""
        with self._lock:
            if self._stopped:
                return False
            slot.engine = self._launch(slot.index, port)
            slot.started = time.monotonic()
            return True

    def stop(self, grace_s: float = 10.0) -> None:
        with self._lock:
            self._stopped = True
            engines = self.engines
        for engine in engines:
            engine.stop(grace_s)

    def settled(self, statuses: list[ReplicaStatus]) -> bool:
        """Every replica healthy or given up: a load need not wait longer."""
        return all(st.healthy or slot.gave_up for st, slot in zip(statuses, self.slots, strict=True))


class Supervisor:
    def __init__(self, policy: RestartPolicy | None = None) -> None:
        self.policy = policy or RestartPolicy()

    def check(
        self,
        replicas: EngineReplicas,
        probe: Callable[[str], ReplicaStatus],
        relaunched: Callable[[int, str, str], None] = lambda i, old, new: None,
    ) -> list[ReplicaStatus]:
        """Every replica's status after moving it on (see the module's docstring); ``probe`` checks
        a running engine's health, ``relaunched(index, old_url, new_url)`` hears of a new engine.
        EngineFailed when every replica was given up."""
        statuses = [self._step(replicas, slot, probe, relaunched) for slot in replicas.slots]
        if all(slot.gave_up for slot in replicas.slots):
            raise EngineFailed("; ".join(f"replica {s.index}: {s.gave_up}" for s in replicas.slots))
        return statuses

    def _step(
        self,
        replicas: EngineReplicas,
        slot: EngineSlot,
        probe: Callable[[str], ReplicaStatus],
        relaunched: Callable[[int, str, str], None],
    ) -> ReplicaStatus:
        now = time.monotonic()
        if slot.gave_up:
            return self._status(slot, slot.gave_up)
        if slot.restart_at is not None:
            if now < slot.restart_at:
                return self._status(slot, slot.note)
            return self._relaunch(replicas, slot, relaunched)
        code = slot.engine.exited()
        if code is not None:
            return self._exited(replicas, slot, f"engine exited with {exit_description(code)}", code)
        status = probe(slot.engine.url)
        if not status.healthy and (code := slot.engine.exited()) is not None:  # died meanwhile
            return self._exited(replicas, slot, f"engine exited with {exit_description(code)}", code)
        if status.healthy:
            if slot.healthy_since is None:
                slot.healthy_since, slot.load_crashes, slot.note = now, 0, ""
                if slot.restarts:
                    log.info(
                        "%s replica %d is healthy again (restart %d)",
                        replicas.name,
                        slot.index,
                        slot.restarts,
                    )
            if now - slot.healthy_since >= self.policy.stable_s:
                slot.backoff_step = 0
        elif slot.healthy_since is None and slot.restarts:
            if now - slot.started > self.policy.load_timeout_s:
                slot.engine.stop()
                limit = f"{self.policy.load_timeout_s:g} s"
                return self._exited(replicas, slot, f"engine did not become healthy within {limit}", None)
            status = replace(status, error=slot.note)  # loading again: say why it restarted
        return replace(status, restarts=slot.restarts, restart_reason=slot.restart_reason)

    def _exited(
        self, replicas: EngineReplicas, slot: EngineSlot, what: str, code: int | None
    ) -> ReplicaStatus:
        now, p = time.monotonic(), self.policy
        if slot.healthy_since is not None:
            reason = f"{what} after {duration(now - slot.started)}"
            if now - slot.healthy_since >= p.stable_s:
                slot.backoff_step = 0
        else:
            said = slot.engine.failure() if code is not None else ""
            reason = f"{what} while loading{f': {said}' if said else ''} (log: {slot.engine.log})"
            slot.load_crashes += 1
            if code in GIVE_UP_EXITS or slot.load_crashes >= p.load_tries:
                tries = "" if code in GIVE_UP_EXITS else f"; gave up after {slot.load_crashes} tries"
                slot.gave_up = f"{reason}{tries}"
                log.warning("%s replica %d: %s", replicas.name, slot.index, slot.gave_up)
                return self._status(slot, slot.gave_up)
        delay = min(p.backoff_max_s, p.backoff_s * 2**slot.backoff_step)
        slot.backoff_step += 1
        slot.restarts += 1
        slot.restart_reason = reason
        slot.restart_at = now + delay
        slot.note = f"{reason}; restarting in {delay:g} s (restart {slot.restarts})"
        log.warning("%s replica %d: %s", replicas.name, slot.index, slot.note)
        return self._status(slot, slot.note)

    def _relaunch(
        self, replicas: EngineReplicas, slot: EngineSlot, relaunched: Callable[[int, str, str], None]
    ) -> ReplicaStatus:
        old = slot.engine.url
        # The same port where the engine had served (a listener that died frees it at once); a new
        # one after a crash while loading, which may have been a port taken meanwhile.
        port = reusable_port(old) if slot.healthy_since is not None else 0
        try:
            started = replicas.relaunch(slot, port)
        except Exception as exc:  # noqa: BLE001 - e.g. OSError: counted as a start that failed
            slot.restart_at, slot.healthy_since = None, None
            return self._exited(replicas, slot, f"engine could not be started ({exc})", None)
        if not started:
            return self._status(slot, "stopped")
        slot.restart_at, slot.healthy_since = None, None
        slot.note = f"{slot.restart_reason}; started again, loading (restart {slot.restarts})"
        relaunched(slot.index, old, slot.engine.url)
        log.info("%s replica %d: started again (restart %d)", replicas.name, slot.index, slot.restarts)
        return self._status(slot, slot.note)

    @staticmethod
    def _status(slot: EngineSlot, error: str) -> ReplicaStatus:
        return ReplicaStatus(
            slot.engine.url,
            False,
            error=error,
            last_check_time=time.time(),
            restarts=slot.restarts,
            restart_reason=slot.restart_reason,
        )


def restart_due_in(replicas: EngineReplicas | None) -> float:
    """Seconds until an engine of ``replicas`` is due to be started again (inf: none is)."""
    if replicas is None:
        return math.inf
    now = time.monotonic()
    return min((s.restart_at - now for s in replicas.slots if s.restart_at is not None), default=math.inf)


def exit_description(code: int) -> str:
    """A process's exit as ``Popen.returncode`` tells it: "code 3", "signal 9 (SIGKILL)"."""
    if code >= 0:
        return f"code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"
    return f"signal {-code} ({name})"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def reusable_port(url: str) -> int:
    """``url``'s port when nothing listens on it now, else 0 (any free port)."""
    port = urlsplit(url).port or 0
    if not port:
        return 0
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the engine's server binds it
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port
