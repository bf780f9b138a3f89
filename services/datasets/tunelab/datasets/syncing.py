"""SyncRunner: fetches a dataset's source into staging and prewarms it, on a small pool.

Everything a sync needs to resume after a crash lives on disk: the staging directory, a marker
written once the fetch completed, the hash cache and the blob index. ``resume_unfinished`` restarts
the syncs a previous process left behind.

Replicas share the versions table: the replica running a sync owns its version
(``tunelab.common.ownership``) and renews that while it runs. ``resume_unfinished`` takes only
syncs no live replica holds (this replica's own from before a restart, or those of a replica that
stopped renewing), and the keeper thread calls it every third of the lease, so the syncs of a
replica that died are finished by another (from the start: its staging was on the dead one's disk).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tunelab.common.errors import FailedPrecondition, NotFound, TunelabError
from tunelab.common.ownership import Keeper, Ownership, replica_name
from tunelab.datasets.registry import Registry, VersionDeleted, VersionRecord
from tunelab.datasets.sources.spec import (
    FETCHED,
    FetchPolicy,
    GitSpec,
    HfSpec,
    HttpSpec,
    S3Spec,
    SourceSpec,
    spec_from_dict,
)
from tunelab.datasets.tables import versions_t

log = logging.getLogger(__name__)

Prewarm = Callable[[VersionRecord, Path, dict[str, str]], VersionRecord]
Fetch = Callable[..., dict[str, str]]


def record_failure(registry: Registry, version: VersionRecord, exc: Exception) -> None:
    """Marks ``version`` FAILED with a reason a person can act on."""
    reason = exc.message if isinstance(exc, TunelabError) else f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, TunelabError):
        log.error("dataset version failed", extra={"version": version.name}, exc_info=exc)
    try:
        current = registry.get_version(version.dataset_id, version.number)
        registry.update_version(current, state="FAILED", error=reason)
    except NotFound:
        pass


class SyncRunner:
    def __init__(
        self,
        registry: Registry,
        work_dir: Path,
        policy: FetchPolicy,
        prewarm: Prewarm,
        *,
        fetch: Fetch | None = None,
        workers: int = 2,
        replica: str = "",
        lease_s: float = 30.0,
    ) -> None:
        """``replica``: this replica's name (TUNELAB_REPLICA_ID; empty: one of its own);
        ``lease_s``: how long its hold on a sync lasts unrenewed."""
        self.registry = registry
        self.work_dir = work_dir
        self.policy = policy
        self.prewarm = prewarm
        self.fetch = fetch
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sync")
        self._running: dict[tuple[str, int], Future[None]] = {}
        self.ownership = Ownership(
            registry.engine, versions_t, replica or replica_name("", work_dir), lease_s
        )
        self._keeper = Keeper("sync-leases", lease_s, self._keep)

    def submit(self, version: VersionRecord) -> bool:
        """Runs the sync of ``version`` here, unless another live replica runs it (False)."""
        key = (version.dataset_id, version.number)
        if key in self._running or not self.ownership.claim(_key(version)):
            return False
        self._running[key] = self._pool.submit(self._run, version)
        self._keeper.start()
        return True

    def resume_unfinished(self) -> int:
        """Takes the unfinished syncs no live replica holds; from then on the keeper renews this
        replica's holds and takes those of replicas that die."""
        resumed = 0
        for version in self.registry.unfinished_versions():
            try:
                spec = spec_from_dict(self.registry.get_dataset(version.dataset_id).source)
            except NotFound:
                continue  # deleted meanwhile
            if spec.kind in FETCHED and self.submit(version):
                log.info("resuming interrupted sync", extra={"version": version.name})
                resumed += 1
        self._keeper.start()
        return resumed

    def _keep(self) -> None:
        running = [key for key, future in list(self._running.items()) if not future.done()]
        self.ownership.renew([{"dataset_id": d, "number": n} for d, n in running])
        self.resume_unfinished()

    def wait_idle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for future in list(self._running.values()):
            future.result(timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._keeper.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, version: VersionRecord) -> None:
        staging = self.work_dir / "staging" / version.dataset_id / str(version.number)
        fetched_marker = staging.with_name(f"{version.number}.fetched.json")
        try:
            spec = spec_from_dict(self.registry.get_dataset(version.dataset_id).source)
            if fetched_marker.exists():
                provenance = json.loads(fetched_marker.read_text())
            else:
                version = self.registry.update_version(
                    version, state="FETCHING", progress={"phase": "fetching"}
                )
                self._clear(staging)
                staging.mkdir(parents=True)
                provenance = self._fetch_into(spec, staging, version)
                fetched_marker.write_text(json.dumps(provenance))
            version = self.registry.update_version(version, state="UPLOADING", provenance=provenance)
            self.prewarm(version, staging, provenance)
            shutil.rmtree(staging, ignore_errors=True)
            fetched_marker.unlink(missing_ok=True)
        except VersionDeleted:
            self._clear(staging)
            fetched_marker.unlink(missing_ok=True)
        except Exception as exc:  # noqa: BLE001 - a failed sync is recorded, never raised into the pool
            record_failure(self.registry, version, exc)
        finally:
            self.ownership.release(_key(version))
            self._running.pop((version.dataset_id, version.number), None)

    @staticmethod
    def _clear(staging: Path) -> None:
        """Removes a staging directory and the download folders a killed fetch left beside it."""
        shutil.rmtree(staging, ignore_errors=True)
        for leftover in staging.parent.glob(f".{staging.name}.download-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _fetch_into(self, spec: SourceSpec, staging: Path, version: VersionRecord) -> dict[str, str]:
        if self.fetch is None:
            from tunelab.datasets.sources.fetch import fetch_source

            self.fetch = fetch_source
        last = [0.0]

        def progress(message: str, done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] < 0.5:
                return
            last[0] = now
            current = self.registry.get_version(version.dataset_id, version.number)
            fields: dict[str, Any] = {"phase": "fetching", "current_file": message}
            fields.update(bytes_done=done, bytes_total=total)
            self.registry.update_version(current, progress=fields)

        if not isinstance(spec, HttpSpec | GitSpec | S3Spec | HfSpec):
            raise FailedPrecondition(f"a {spec.kind!r} source is not fetched by the service")
        return dict(self.fetch(spec, staging, self.policy, progress))


def _key(version: VersionRecord) -> dict[str, object]:
    return {"dataset_id": version.dataset_id, "number": version.number}
