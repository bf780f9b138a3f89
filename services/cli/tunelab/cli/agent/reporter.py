"""Sends an attempt's events to the trainer in batches, with sequence numbers, resending what was
not acknowledged (the trainer may be restarting) and heartbeating when there is nothing to say.
The trainer's answers carry cancel requests and whether the attempt is still current."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import grpc

from tunelab.cli.clients.trainer import TrainerClient
from tunelab.trainer.v1 import trainer_pb2 as pb

log = logging.getLogger(__name__)
BATCH = 2000
MAX_PENDING = 200_000  # log lines beyond this, while the trainer is unreachable, are dropped oldest first


class Reporter:
    def __init__(
        self, client: TrainerClient, job: str, attempt: int, worker: int, interval_s: float = 2.0
    ) -> None:
        self.client, self.job, self.attempt, self.worker = client, job, attempt, worker
        self.interval_s = interval_s
        self.cancel_requested = threading.Event()
        self.superseded = threading.Event()
        self.grace_s: float | None = None
        self.on_cancel: Callable[[], None] | None = None
        self.dropped = 0
        self._pending: deque[pb.JobEvent] = deque()
        self._seq = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="agent-reporter", daemon=True)

    # -- events -----------------------------------------------------------------------------
    def _add(self, urgent: bool = False, **event: object) -> None:
        with self._lock:
            self._seq += 1
            e = pb.JobEvent(sequence=self._seq, **event)  # type: ignore[arg-type]
            e.time.GetCurrentTime()
            self._pending.append(e)
            if len(self._pending) > MAX_PENDING:
                self._drop_oldest_line()
        if urgent or len(self._pending) >= BATCH:
            self._wake.set()

    def _drop_oldest_line(self) -> None:
        for i, e in enumerate(self._pending):
            if e.WhichOneof("event") == "log_line":
                del self._pending[i]
                self.dropped += 1
                return

    def phase(self, state: int, phase: str, message: str = "") -> None:
        self._add(urgent=True, phase=pb.PhaseEvent(state=state, phase=phase, message=message))  # type: ignore[arg-type]

    def line(self, stream: int, text: str) -> None:
        self._add(log_line=pb.LogLine(stream=stream, text=text))  # type: ignore[arg-type]

    def say(self, text: str) -> None:
        """An agent line: into the job's log and the agent's own output."""
        print(f"[agent] {text}", flush=True)
        self.line(pb.LogLine.STREAM_AGENT, text)

    def metrics(self, point: pb.MetricsPoint) -> None:
        self._add(metrics=point)

    def commit(self, path: str, version: str, final: bool) -> None:
        self._add(urgent=True, output_commit=pb.OutputCommitEvent(path=path, version=version, final=final))

    def exit(self, reason: str, message: str, exit_code: int | None = None, signal: int = 0) -> None:
        e = pb.ExitEvent(reason=reason, message=message, signal=signal)
        if exit_code is not None:
            e.exit_code = exit_code
        self._add(urgent=True, exit=e)

    # -- sending ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.flush():
                backoff = 0.5
            else:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def flush(self) -> bool:
        """Sends pending events (or a heartbeat); False when the trainer could not be reached."""
        with self._send_lock:
            while True:
                with self._lock:
                    batch = list(self._pending)[:BATCH]
                try:
                    resp = self.client.report(self.job, self.attempt, self.worker, batch, timeout=30)
                except grpc.RpcError as exc:
                    log.warning("cannot report to the trainer (%s); will retry", exc.code())  # type: ignore[attr-defined]
                    return False
                with self._lock:
                    while self._pending and self._pending[0].sequence <= resp.acknowledged_sequence:
                        self._pending.popleft()
                    more = bool(self._pending) and len(batch) == BATCH
                self._answer(resp)
                if not more or self.superseded.is_set():
                    return True

    def _answer(self, resp: pb.ReportJobEventsResponse) -> None:
        if resp.HasField("cancel_grace_period"):
            self.grace_s = resp.cancel_grace_period.ToTimedelta().total_seconds()
        if resp.attempt_superseded and not self.superseded.is_set():
            self.superseded.set()
            self._cancel()
        if resp.cancel_requested and not self.cancel_requested.is_set():
            self.cancel_requested.set()
            self._cancel()

    def _cancel(self) -> None:
        if self.on_cancel is not None:
            self.on_cancel()

    def close(self, deliver_timeout_s: float) -> bool:
        """Stops the loop after delivering everything, trying for up to ``deliver_timeout_s``."""
        self._stop.set()
        self._wake.set()
        self._thread.join(35)
        deadline = time.monotonic() + deliver_timeout_s
        delay = 0.5
        while True:
            if self.flush() and not self._pending:
                return True
            if self.superseded.is_set() or time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
