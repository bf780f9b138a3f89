"""How attempts end and what happens to their job next: done, retried by its restart policy, or
failed; and how a job is cancelled. Each transition runs with the job's row locked in the database
(``Registry.locked``), so replicas (and threads) never interleave two of one job's transitions."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from tunelab.common.errors import TunelabError
from tunelab.trainer.claims import RELEASED
from tunelab.trainer.executor import Executor
from tunelab.trainer.metrics import TrainerMetrics
from tunelab.trainer.records import (
    CANCELLED,
    CANCELLING,
    FAILED,
    QUEUED,
    SUCCEEDED,
    JobRecord,
    is_server,
)
from tunelab.trainer.references import References
from tunelab.trainer.registry import JobTx, Registry
from tunelab.trainer.v1 import trainer_pb2 as pb

log = logging.getLogger(__name__)

# Failures that another attempt cannot fix: the job fails at once whatever its restart policy.
PERMANENT = frozenset({"CommandNotFound", "InvalidMount", "InvalidInput", "NaNLoss"})

# How an agent tells that the command ended by itself (status 0, another status, a signal).
COMMAND_ENDED = frozenset({"", "Succeeded", "NonZeroExit", "Killed", "Signaled"})


@dataclass(frozen=True)
class Exit:
    """How an attempt ended, as its agent (or the trainer, for a lost one) tells it."""

    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    signal: int = 0

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and self.reason in ("", "Succeeded")


def server_ended(exit: Exit) -> tuple[str, str]:
    """(reason, message) of a server attempt's end. A server runs until it is cancelled, so its
    command ending is a failure (ServerExited), status 0 included; other ends keep their reason."""
    if exit.reason in COMMAND_ENDED:
        return "ServerExited", f"the server stopped: {exit.message or f'exit status {exit.exit_code}'}"
    return exit.reason, exit.message


@dataclass(frozen=True)
class Backoff:
    base_s: float = 10.0
    max_s: float = 600.0

    def delay(self, failures: int) -> float:
        return float(min(self.base_s * 2 ** max(failures - 1, 0), self.max_s))


class Lifecycle:
    def __init__(
        self,
        registry: Registry,
        executor: Executor,
        refs: References,
        metrics: TrainerMetrics,
        backoff: Backoff,
        cancel_grace_s: float,
        server_stable_s: float = 600.0,
    ) -> None:
        self.registry, self.executor, self.refs, self.metrics = registry, executor, refs, metrics
        self.backoff = backoff
        self.cancel_grace_s = cancel_grace_s
        # A server attempt that ran this long was healthy: the restarts after it count from zero
        # (as Kubernetes resets a crash loop's backoff), so backoff_limit bounds crash loops, not
        # the restarts of a long life.
        self.server_stable_s = server_stable_s
        self.kick = threading.Event()  # wakes the supervisor: resources were freed or jobs queued

    def grace_of(self, job: JobRecord) -> float:
        if job.cancel_grace_s is not None:
            return job.cancel_grace_s
        if job.spec.HasField("cancel_grace_period"):
            return job.spec.cancel_grace_period.ToTimedelta().total_seconds()
        return self.cancel_grace_s

    # -- cancel -----------------------------------------------------------------------------
    def cancel(self, job_id: str, reason: str = "Cancelled", grace_s: float | None = None) -> JobRecord:
        with self.registry.locked(job_id) as tx:
            job = tx.job
            if job.terminal:
                return job
            now = time.time()
            if job.state == QUEUED:
                return tx.update(
                    state=CANCELLED if reason == "Cancelled" else FAILED,
                    reason=reason,
                    message="cancelled while queued",
                    phase="",
                    end_time=now,
                )
            if job.state != CANCELLING:
                job = tx.update(
                    state=CANCELLING, cancel_reason=reason, cancel_grace_s=grace_s, cancel_time=now
                )
            elif grace_s is not None:
                job = tx.update(cancel_grace_s=grace_s)
        att = job.current
        if att is not None and att.executor_ref:
            self.executor.stop(att.executor_ref)
        return job

    # -- the end of an attempt --------------------------------------------------------------
    def end_attempt(self, job_id: str, number: int, exit: Exit) -> JobRecord:
        """Records how attempt ``number`` ended and moves the job on; a no-op for an attempt
        that already ended or is no longer current."""
        with self.registry.locked(job_id) as tx:
            job = tx.job
            att = job.current
            if att is None or att.number != number or att.end_time is not None:
                return job
            exit = self._explained(att.executor_ref, exit)
            state, reason, message = self._outcome(job, exit)
            now = time.time()
            tx.update_attempt(
                number, state=state, reason=reason, message=message, exit_code=exit.exit_code, end_time=now
            )
            job = self._next(tx, state, reason, message, exit, now)
        self.metrics.attempt_ended(state)
        self.release_lease(att.lease)
        if is_server(job.spec) and att.executor_ref:
            # Nothing of it may go on: a Deployment would restart its pod, and what the command
            # left behind would hold its port and GPUs.
            self.executor.kill(att.executor_ref)
        self.kick.set()
        log.info("attempt ended", extra={"job": job_id, "attempt": number, "state": state, "reason": reason})
        return job

    @staticmethod
    def _outcome(job: JobRecord, exit: Exit) -> tuple[str, str, str]:
        """The attempt's (state, reason, message)."""
        if job.state == CANCELLING:
            reason = job.cancel_reason or "Cancelled"
            state = CANCELLED if reason == "Cancelled" else FAILED
            return state, reason, exit.message if reason == "Cancelled" else f"stopped: {reason}"
        if is_server(job.spec):
            return (FAILED, *server_ended(exit))
        if exit.succeeded:
            return SUCCEEDED, "Succeeded", exit.message
        return FAILED, exit.reason or "NonZeroExit", exit.message

    def _next(self, tx: JobTx, state: str, reason: str, message: str, exit: Exit, now: float) -> JobRecord:
        """The job after its current attempt ended: finished, requeued, or failed for good. No
        replica owns it any more."""
        job = tx.job
        att = job.current
        assert att is not None
        number = att.number
        base: dict[str, Any] = {"exit_code": exit.exit_code, "phase": "", **RELEASED}
        if job.state == CANCELLING or (state == SUCCEEDED and not self._again(job, succeeded=True)):
            return tx.update(state=state, reason=reason, message=message, end_time=now, **base)
        if state == SUCCEEDED:
            return self._requeue(tx, "Restarting", f"attempt {number} succeeded; policy ALWAYS", **base)
        what = f"attempt {number} failed ({reason}): {message}".rstrip(": ")
        if is_server(job.spec) and job.failures and now - att.start_time >= self.server_stable_s:
            job = tx.update(failures=0)
        if reason in PERMANENT or job.spec.restart_policy == pb.RESTART_POLICY_NEVER:
            return tx.update(state=FAILED, reason=reason, message=message, end_time=now, **base)
        if not self._again(job, succeeded=False):
            limit = job.spec.backoff_limit
            return tx.update(
                state=FAILED,
                reason="BackoffLimitExceeded",
                message=f"{what}; all {limit} retries used (backoff limit {limit})",
                end_time=now,
                **base,
            )
        return self._requeue(tx, "Restarting" if is_server(job.spec) else "Retrying", what, **base)

    def _explained(self, ref: str, exit: Exit) -> Exit:
        """A command its agent saw killed by SIGKILL: the executor may know who did it (the kernel,
        at the attempt's memory limit: OOMKilled)."""
        if exit.reason != "Killed" or not ref:
            return exit
        st = self.executor.status(ref)
        if st.reason != "OOMKilled":
            return exit
        return Exit(st.reason, st.message, exit.exit_code, exit.signal)

    def _again(self, job: JobRecord, succeeded: bool) -> bool:
        policy = job.spec.restart_policy
        if succeeded and policy != pb.RESTART_POLICY_ALWAYS:
            return False
        return job.failures < job.spec.backoff_limit

    def _requeue(self, tx: JobTx, reason: str, what: str, **extra: object) -> JobRecord:
        job = tx.job
        failures = job.failures + 1
        delay = self.backoff.delay(failures)
        return tx.update(
            state=QUEUED,
            reason=reason,
            message=f"{what}; retry {failures} of {job.spec.backoff_limit} in {delay:.0f}s",
            failures=failures,
            not_before=time.time() + delay,
            **extra,
        )

    def release_lease(self, lease: str) -> None:
        if not lease:
            return
        try:
            self.refs.release(lease)
        except TunelabError as exc:  # it lapses by itself; the build stays protected meanwhile
            log.warning("could not release environment lease %s: %s", lease, exc.message)
