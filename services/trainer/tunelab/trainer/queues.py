"""Queues: named quotas over running jobs (GPUs, concurrent jobs, CPU, memory)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from tunelab.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from tunelab.common.names import check_id
from tunelab.trainer.records import ACTIVE, DEFAULT_QUEUE, QUEUED, QueueRecord
from tunelab.trainer.registry import Registry
from tunelab.trainer.scheduler import QueueUsage
from tunelab.trainer.supervisor import Supervisor

WRITABLE = (
    "description",
    "labels",
    "state",
    "gpu_quota",
    "max_concurrent_jobs",
    "cpu_quota_millis",
    "memory_quota_bytes",
)


def check_quotas(rec: QueueRecord) -> None:
    for name in WRITABLE[3:]:
        value = getattr(rec, name)
        if value is not None and value < 0:
            raise InvalidArgument(f"{name} must not be negative, got {value}")
    if rec.max_concurrent_jobs == 0:
        raise InvalidArgument("max_concurrent_jobs must be 1 or more (pause the queue to stop starting jobs)")
    if rec.state not in ("OPEN", "PAUSED"):
        raise InvalidArgument(f"queue state must be OPEN or PAUSED, got {rec.state}")


class QueueService:
    def __init__(self, registry: Registry, supervisor: Supervisor) -> None:
        self.registry = registry
        self.supervisor = supervisor

    def ensure_default(self, gpu_quota: int | None, max_concurrent_jobs: int | None) -> None:
        if any(q.id == DEFAULT_QUEUE for q in self.registry.list_queues()):
            return
        now = time.time()
        default = QueueRecord(
            DEFAULT_QUEUE,
            now,
            now,
            description="The queue jobs go to without --queue.",
            gpu_quota=gpu_quota,
            max_concurrent_jobs=max_concurrent_jobs,
        )
        try:
            self.registry.create_queue(default)
        except AlreadyExists:
            pass  # a replica starting at the same time made it

    def create(self, queue_id: str, rec: QueueRecord) -> QueueRecord:
        now = time.time()
        rec = replace(rec, id=check_id(queue_id, "queue_id"), create_time=now, update_time=now)
        check_quotas(rec)
        return self.registry.create_queue(rec)

    def get(self, queue_id: str) -> QueueRecord:
        return self.registry.get_queue(queue_id)

    def list_queues(self) -> list[QueueRecord]:
        return self.registry.list_queues()

    def update(self, queue_id: str, rec: QueueRecord, fields: list[str]) -> QueueRecord:
        unknown = sorted(set(fields) - set(WRITABLE))
        if unknown:
            raise InvalidArgument(
                f"update_mask: {', '.join(unknown)} cannot be changed; writable: {WRITABLE}"
            )
        changes: dict[str, Any] = {f: getattr(rec, f) for f in (fields or WRITABLE)}
        check_quotas(replace(self.registry.get_queue(queue_id), **changes))
        updated = self.registry.update_queue(queue_id, **changes)
        self.supervisor.lifecycle.kick.set()
        return updated

    def delete(self, queue_id: str) -> None:
        if queue_id == DEFAULT_QUEUE:
            raise FailedPrecondition("queues/default cannot be deleted")
        self.registry.get_queue(queue_id)
        unfinished = self.registry.count_in_queue(queue_id, (QUEUED, *ACTIVE))
        if unfinished:
            raise FailedPrecondition(
                f"queue {queue_id} holds {unfinished} unfinished job(s); cancel or wait for them first"
            )
        self.registry.delete_queue(queue_id)

    def usage(self) -> dict[str, QueueUsage]:
        per_queue, _ = self.supervisor.usage(self.registry.active_jobs())
        for job in self.registry.queued_in_order():
            per_queue.setdefault(job.queue, QueueUsage()).queued += 1
        return per_queue
