"""Builder: turns one resolved lock into a stored build (layers + manifest) under its env_key.

Distributions whose layer is already stored (same hashes, Python and platform) are not installed
again; the rest are installed into a fresh relocatable venv in a temporary directory with
``uv pip sync --require-hashes``, packed one layer per distribution in parallel, and stored as
blobs. The manifest at ``environments/<env_key>/manifest.json`` (the common format, so the datasets
service's garbage collector keeps these blobs) is written last; nothing is READY before it.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path

from tunelab.common.storage.blobs import BlobStore
from tunelab.common.storage.manifest import FileEntry, Manifest
from tunelab.environments.catalog import BuildRecord, Catalog
from tunelab.environments.explain import BuildFailed
from tunelab.environments.lock import LockEntry, Target, layer_key, lock_subset
from tunelab.environments.pack import (
    VENV_LAYER,
    Layer,
    installed_distributions,
    pack_layer,
    remaining_paths,
)
from tunelab.environments.spec import Spec, canonical_name
from tunelab.environments.uv import Interpreter, Uv

Log = Callable[[str, str], None]  # (phase, text)
SetPhase = Callable[[str, str], None]  # (state, phase)
PROCESS_POOL_FILES = 2000


def manifest_key(env_key: str) -> str:
    return f"environments/{env_key}/manifest.json"


class Pins:
    """Layer blobs that builds in flight rely on; garbage collection leaves them alone.

    ``lock`` is held by a build while it checks which layers exist and pins them, and by the
    collector for the whole of a sweep, so a blob is never deleted between check and use.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._pins: dict[int, set[str]] = {}
        self._next = 0

    def pin(self, blobs: set[str]) -> int:
        self._next += 1
        self._pins[self._next] = blobs
        return self._next

    def unpin(self, token: int) -> None:
        with self.lock:
            self._pins.pop(token, None)

    def pinned(self) -> set[str]:
        return set().union(*self._pins.values()) if self._pins else set()


class Builder:
    def __init__(
        self,
        uv: Uv,
        blobs: BlobStore,
        catalog: Catalog,
        work_dir: Path,
        pins: Pins,
        *,
        zstd_level: int = 1,
        pack_workers: int = 2,
    ) -> None:
        self.uv = uv
        self.blobs = blobs
        self.catalog = catalog
        self.work_dir = work_dir
        self.pins = pins
        self.zstd_level = zstd_level
        self.pack_workers = pack_workers

    def build(
        self,
        env_key: str,
        lock: str,
        entries: list[LockEntry],
        spec: Spec,
        python: Interpreter,
        target: Target,
        log: Log,
        set_phase: SetPhase,
        deadline: float,
    ) -> BuildRecord:
        keys = {e.name: layer_key(e, target) for e in entries}
        with self.pins.lock:
            known = self.catalog.layers(list(keys.values()))
            gone = self.blobs.missing({layer.sha256 for layer in known.values()})
            known = {k: v for k, v in known.items() if v.sha256 not in gone}
            token = self.pins.pin({layer.sha256 for layer in known.values()})
        todo = [e for e in entries if keys[e.name] not in known]
        self.work_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.work_dir, prefix=f"{env_key[:12]}-"))
        try:
            log("installing", f"{len(entries) - len(todo)} of {len(entries)} packages reuse stored layers")
            venv = staging / "env"
            set_phase("INSTALLING", "installing")
            log("installing", f"creating a relocatable venv on Python {python.version} ({python.path})")
            self.uv.venv(spec, python, venv, lambda line: log("installing", line), deadline)
            if todo:
                self._install(spec, venv, lock, todo, log, set_phase, deadline)
            set_phase("PACKING", "packing")
            fresh = self._pack(venv, todo, keys, log)
            set_phase("PACKING", "storing")
            layers = [fresh.pop(VENV_LAYER)] + [
                known.get(keys[e.name]) or fresh[keys[e.name]] for e in entries
            ]
            build = self._record(env_key, python, target, entries, layers, fresh)
            log("storing", f"stored {len(fresh) + 1} new layer(s); {len(layers)} in all")
            return build
        finally:
            self.pins.unpin(token)
            self._discard(staging)

    def _packer(self, files: int) -> Executor:
        """Processes for big builds (packing is CPU-bound and tarfile holds the GIL), threads for small
        ones (a process pool costs a few hundred milliseconds to start). forkserver: never fork a
        process that runs gRPC threads."""
        if files < PROCESS_POOL_FILES:
            return ThreadPoolExecutor(self.pack_workers, thread_name_prefix="pack")
        return ProcessPoolExecutor(self.pack_workers, mp_context=multiprocessing.get_context("forkserver"))

    def _discard(self, path: Path) -> None:
        """Moves a finished build's directory aside and deletes it in the background (deleting
        ~20,000 files takes seconds that the build should not wait for)."""
        trash = self.work_dir.parent / "trash"
        trash.mkdir(parents=True, exist_ok=True)
        moved = trash / path.name
        try:
            path.rename(moved)
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
            return
        threading.Thread(target=shutil.rmtree, args=(moved, True), name="discard", daemon=True).start()

    def clean(self) -> None:
        """Removes what builds a crash or restart interrupted left behind (call before building)."""
        for leftover in (self.work_dir, self.work_dir.parent / "trash"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _install(
        self,
        spec: Spec,
        venv: Path,
        lock: str,
        todo: list[LockEntry],
        log: Log,
        set_phase: SetPhase,
        deadline: float,
    ) -> None:
        subset = venv.parent / "lock.txt"
        subset.write_text(lock_subset(lock, {e.name for e in todo}))
        set_phase("INSTALLING", "downloading")
        phase = ["downloading"]

        def on_line(line: str) -> None:
            if line.startswith("Prepared"):
                phase[0] = "installing"
                set_phase("INSTALLING", "installing")
            log(phase[0], line)

        self.uv.sync(spec, venv, subset, on_line, deadline)

    def _pack(self, venv: Path, todo: list[LockEntry], keys: dict[str, str], log: Log) -> dict[str, Layer]:
        """Packs and stores a layer per installed distribution of ``todo``, and the venv layer."""
        installed = installed_distributions(venv)
        by_name = {label.split("==")[0]: (label, paths) for label, paths in installed.items()}
        jobs: dict[str, tuple[str, list[str]]] = {}
        for entry in todo:
            if entry.name not in by_name:
                raise BuildFailed(f"packing failed: {entry.label} is in the lock but was not installed")
            jobs[keys[entry.name]] = by_name[entry.name]
        claimed = [p for paths in installed.values() for p in paths]
        jobs[VENV_LAYER] = (VENV_LAYER, remaining_paths(venv, claimed))
        log("packing", f"packing {len(jobs)} layer(s) of {sum(len(p) for _, p in jobs.values())} files")
        out_dir = venv.parent / "layers"
        out_dir.mkdir()
        started = time.monotonic()
        done: dict[str, Layer] = {}

        def store(key: str, layer: Layer, out: Path) -> None:
            self.blobs.put_file(layer.sha256, out)
            out.unlink()
            done[key] = layer

        # Largest first, so the long ones do not start last; each layer is stored as soon as it is packed.
        ordered = sorted(jobs.items(), key=lambda kv: -len(kv[1][1]))
        with self._packer(sum(len(p) for _, p in jobs.values())) as pool, ThreadPoolExecutor(4) as uploads:
            packing: dict[Future[Layer], tuple[str, Path]] = {}
            for key, (label, paths) in ordered:
                out = out_dir / f"{_safe(label)}.tar.zst"
                packing[pool.submit(pack_layer, label, venv, paths, out, self.zstd_level)] = (key, out)
            stored = []
            for f in as_completed(packing):
                key, out = packing[f]
                stored.append(uploads.submit(store, key, f.result(), out))
            for done_storing in stored:
                done_storing.result()
        packed = sum(layer.size for layer in done.values())
        log("packing", f"packed and stored {packed / 1e6:.1f} MB in {time.monotonic() - started:.1f}s")
        return done

    def _record(
        self,
        env_key: str,
        python: Interpreter,
        target: Target,
        entries: list[LockEntry],
        layers: list[Layer],
        fresh: dict[str, Layer],
    ) -> BuildRecord:
        files = [
            FileEntry(f"layers/{i:04d}-{_safe(layer.name)}.tar.zst", layer.size, layer.sha256, 0o644)
            for i, layer in enumerate(layers)
        ]
        source = {
            "kind": "environment",
            "env_key": env_key,
            "python": target.python_version,
            "platform": target.platform,
            "layers": json.dumps([layer.name for layer in layers]),
        }
        manifest = Manifest(files, source, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.blobs.store.put_bytes(manifest_key(env_key), manifest.to_json())
        stored = sum({layer.sha256: layer.size for layer in layers}.values())
        build = BuildRecord(
            env_key=env_key,
            python_version=target.python_version,
            platform=target.platform,
            package_count=len(entries),
            size_bytes=sum(layer.unpacked for layer in layers),
            stored_bytes=stored,
            layers=tuple(layers),
            manifest_sha256=manifest.digest(),
            ready_time=time.time(),
        )
        with self.pins.lock:
            self.catalog.add_layers({k: v for k, v in fresh.items() if k != VENV_LAYER})
            self.catalog.add_build(build)
        return build


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", canonical_name(label) if "==" not in label else label)[:120]
