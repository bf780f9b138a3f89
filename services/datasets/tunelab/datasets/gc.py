"""Garbage collection of blobs that no manifest and no in-flight upload references."""

from __future__ import annotations

import time

from tunelab.common.storage.blobs import BlobStore
from tunelab.common.storage.manifest import Manifest
from tunelab.datasets.registry import Registry

# Every service that stores manifests in the bucket keeps them under one of these prefixes.
MANIFEST_PREFIXES = ("datasets/", "environments/")


def collect_garbage(
    blobs: BlobStore, registry: Registry, grace_s: float, dry_run: bool
) -> tuple[int, int, int]:
    """Returns (blobs deleted, bytes freed, blobs kept). Blobs younger than ``grace_s`` are kept:
    another service may be between uploading them and writing the manifest that references them."""
    referenced: set[str] = set()
    store = blobs.store
    for prefix in MANIFEST_PREFIXES:
        for info in store.list(prefix):
            if info.key.endswith("manifest.json"):
                referenced.update(Manifest.from_json(store.get_bytes(info.key), info.key).unique_blobs())
    for text in registry.pending_upload_manifests():
        referenced.update(Manifest.from_json(text.encode()).unique_blobs())
    cutoff = time.time() - grace_s
    deleted = kept = freed = 0
    gone: list[str] = []
    for sha, size, modified in list(blobs.list()):
        if sha in referenced or modified > cutoff:
            kept += 1
            continue
        if not dry_run:
            blobs.delete(sha)
            gone.append(sha)
        deleted += 1
        freed += size
    registry.forget_blobs(gone)
    return deleted, freed, kept
