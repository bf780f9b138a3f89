"""Garbage collection of environments and their stored builds.

``collect`` deletes READY and FAILED environments without an unexpired lease, least recently used
first, until the stored builds still referenced (by an environment or a lease) fit the budget;
``sweep`` then removes builds nothing references and the layer blobs no remaining build uses.
Layers are shared between builds, so a build's size is counted through its unique blobs.
A blob is only deleted when it is one of our layers, no remaining build and no build in flight
(``Pins``) uses it, and no dataset manifest lists it (one bucket holds both).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tunelab.common.storage.blobs import BlobStore
from tunelab.common.storage.manifest import Manifest
from tunelab.environments.builder import Pins, manifest_key
from tunelab.environments.catalog import BuildRecord, Catalog
from tunelab.environments.registry import EnvRecord, Registry


@dataclass
class GcResult:
    deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    environments_kept: int = 0
    bytes_kept: int = 0


def stored_bytes(builds: list[BuildRecord]) -> int:
    return sum({layer.sha256: layer.size for b in builds for layer in b.layers}.values())


class Collector:
    def __init__(self, registry: Registry, catalog: Catalog, blobs: BlobStore, pins: Pins) -> None:
        self.registry = registry
        self.catalog = catalog
        self.blobs = blobs
        self.pins = pins

    def collect(self, budget: int, min_idle_s: float, dry_run: bool) -> GcResult:
        with self.pins.lock:
            envs = self.registry.all()
            leases = self.catalog.active_leases()
            builds = {b.env_key: b for b in self.catalog.builds()}
            leased = {lease.env_id for lease in leases}
            pinned_keys = {lease.env_key for lease in leases}
            now = time.time()
            candidates = sorted(
                (e for e in envs if e.terminal and e.id not in leased and now - _last_use(e) >= min_idle_s),
                key=_last_use,
            )
            kept = {e.id: e for e in envs}
            before = stored_bytes(list(builds.values()))
            result = GcResult()

            def referenced() -> list[BuildRecord]:
                keys = {e.env_key for e in kept.values() if e.state == "READY"} | pinned_keys
                return [builds[k] for k in keys if k in builds]

            for env in candidates:
                if stored_bytes(referenced()) <= budget:
                    break
                del kept[env.id]
                result.deleted.append(env.name)
            result.bytes_kept = stored_bytes(referenced())
            result.bytes_freed = before - result.bytes_kept
            result.environments_kept = len(kept)
            if not dry_run:
                for name in result.deleted:
                    env_id = name.split("/", 1)[1]
                    self.catalog.drop_leases(env_id)
                    self.registry.delete(env_id)
                self._sweep_locked()
            return result

    def sweep(self) -> int:
        """Removes builds and layer blobs nothing references any more; returns the bytes freed."""
        with self.pins.lock:
            return self._sweep_locked()

    def _sweep_locked(self) -> int:
        envs = self.registry.all()
        keys = {e.env_key for e in envs if e.env_key} | {
            lease.env_key for lease in self.catalog.active_leases()
        }
        builds = self.catalog.builds()
        for build in builds:
            if build.env_key not in keys:
                self.blobs.store.delete(manifest_key(build.env_key))
                self.catalog.delete_build(build.env_key)
        used = {layer.sha256 for b in builds if b.env_key in keys for layer in b.layers} | self.pins.pinned()
        ours = self.catalog.layer_blobs() | {layer.sha256 for b in builds for layer in b.layers}
        doomed = ours - used
        if doomed:
            doomed -= self._dataset_blobs()
        freed = 0
        sizes = {layer.sha256: layer.size for b in builds for layer in b.layers}
        for sha in doomed:
            self.blobs.delete(sha)
            freed += sizes.get(sha, 0)
        self.catalog.forget_layer_blobs(doomed)
        return freed

    def _dataset_blobs(self) -> set[str]:
        """Blobs dataset versions list (the bucket is shared; a dataset may hold equal bytes)."""
        found: set[str] = set()
        for info in self.blobs.store.list("datasets/"):
            if info.key.endswith("/manifest.json"):
                found.update(
                    Manifest.from_json(self.blobs.store.get_bytes(info.key), info.key).unique_blobs()
                )
        return found


def _last_use(env: EnvRecord) -> float:
    return env.last_used_time or env.ready_time or env.create_time
