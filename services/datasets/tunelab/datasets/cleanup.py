"""What interrupted work and a full store leave behind, and how it goes again.

- Partial writes: a writer killed mid-object leaves a temporary object (a ``.tmp-*`` file of a
  directory store, an incomplete S3 multipart upload) that no listing shows. Those untouched for
  ``TUNELAB_PARTIAL_WRITE_GRACE_S`` are removed at start and by every garbage collection: an age, not
  "all of them", because replicas and the environments service write to the same store.
- Interrupted uploads: a version a client (or a transform) was writing when the service stopped
  stays UPLOADING, and its in-flight manifest keeps its blobs from garbage collection. At start it
  is marked FAILED with the reason, which frees them. (Syncs of fetched sources resume instead.)
- A full store: the versions a write was for are marked FAILED with a RESOURCE_EXHAUSTED error that
  names them and the store; the write's temporary object is gone already.
"""

from __future__ import annotations

import logging
import time

from tunelab.common.errors import NotFound, ResourceExhausted
from tunelab.common.storage.objectstore import ObjectStore, StoreFull
from tunelab.datasets.registry import Registry, VersionRecord
from tunelab.datasets.sources.spec import FETCHED

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the service restarted during the {what}"


def interrupted_before(registry: Registry, started: float, grace_s: float) -> float:
    """Unfinished versions created before this time were interrupted. A state database of this
    process's own (SQLite) means every version it did not start itself; one that replicas share
    (Postgres) means only those older than ``grace_s``, since another replica may still be
    receiving the younger ones."""
    return started if registry.engine.dialect.name == "sqlite" else started - grace_s


def fail_interrupted(registry: Registry, before: float) -> list[VersionRecord]:
    """Marks FAILED the uploads and transforms created before ``before`` that never finished."""
    failed: list[VersionRecord] = []
    for version in registry.unfinished_versions():
        if version.create_time >= before:
            continue
        try:
            kind = registry.get_dataset(version.dataset_id).source.get("kind")
        except NotFound:
            continue
        if kind in FETCHED:
            continue  # a sync resumes where it stopped
        what = "transform" if "transform" in version.provenance else "upload"
        if registry.fail_version(version, INTERRUPTED.format(what=what)):
            log.warning("marked an interrupted version FAILED", extra={"version": version.name})
            failed.append(version)
    return failed


def sweep_partial_writes(store: ObjectStore, grace_s: float, dry_run: bool = False) -> tuple[int, int]:
    """Removes partial writes untouched for ``grace_s``; returns (how many, bytes)."""
    count, size = store.sweep_partial(time.time() - grace_s, dry_run)
    if count and not dry_run:
        log.info("removed partial writes", extra={"objects": count, "bytes": size})
    return count, size


def store_full(registry: Registry, exc: StoreFull, versions: list[VersionRecord]) -> ResourceExhausted:
    """Fails ``versions`` (those the write was for) and returns the error that says so."""
    names = ", ".join(f"{v.dataset_id}@{v.number}" for v in versions) or exc.key
    message = f"no space left on the datasets store ({exc.store}) while writing {names}: free space and retry"
    for version in versions:
        registry.fail_version(version, message)
    log.error("the store is full", extra={"versions": names})
    return ResourceExhausted(message)
