"""EnvironmentClient: the environments service as Python calls, including ``pull`` (materialize a
READY environment into a directory, verified and cached by sha256) and ``materialize`` (the job
agent's call: one unpacked copy per build on this machine)."""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import grpc
from google.protobuf.duration_pb2 import Duration

from tunelab.cli.clients.envlayers import PullResult, install, read_marker
from tunelab.common.storage.blobs import BlobCache, write_verified
from tunelab.environments.v1 import environments_pb2 as pb
from tunelab.environments.v1 import environments_pb2_grpc

Progress = Callable[[int, int], None]
TERMINAL = (pb.Environment.STATE_READY, pb.Environment.STATE_FAILED)


def environment_name(name: str) -> str:
    return name if name.startswith("environments/") else f"environments/{name}"


class LayerSource:
    """Fetches layer blobs through the environments service (no object-store credentials needed)."""

    def __init__(self, stub: environments_pb2_grpc.EnvironmentServiceStub, name: str, env_key: str) -> None:
        self._stub = stub
        self._name = name
        self._env_key = env_key

    def fetch(self, sha256: str, size: int, dest: BinaryIO) -> None:
        req = pb.ReadEnvironmentArchiveRequest(name=self._name, env_key=self._env_key, layer_sha256=sha256)
        write_verified(sha256, size, (r.data for r in self._stub.ReadEnvironmentArchive(req)), dest)


class EnvironmentClient:
    def __init__(self, channel: grpc.Channel, cache_dir: Path, *, address: str = "") -> None:
        self.stub = environments_pb2_grpc.EnvironmentServiceStub(channel)
        self.address = address
        self.cache_dir = cache_dir

    # -- environments -------------------------------------------------------------------------
    def create(
        self,
        env_id: str,
        spec: pb.EnvironmentSpec,
        description: str = "",
        labels: dict[str, str] | None = None,
        replace: bool = False,
    ) -> pb.Environment:
        env = pb.Environment(spec=spec, description=description, labels=labels or {})
        req = pb.CreateEnvironmentRequest(environment_id=env_id, environment=env, replace=replace)
        return self.stub.CreateEnvironment(req).environment

    def get(self, name: str) -> pb.Environment:
        return self.stub.GetEnvironment(pb.GetEnvironmentRequest(name=environment_name(name))).environment

    def list(self) -> Iterator[pb.Environment]:
        token = ""
        while True:
            resp = self.stub.ListEnvironments(pb.ListEnvironmentsRequest(page_token=token))
            yield from resp.environments
            token = resp.next_page_token
            if not token:
                return

    def delete(self, name: str, force: bool = False) -> None:
        self.stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=environment_name(name), force=force))

    def watch(
        self, name: str, after_line: int = 0, exclude_logs: bool = False
    ) -> Iterator[pb.WatchEnvironmentResponse]:
        req = pb.WatchEnvironmentRequest(
            name=environment_name(name), after_line=after_line, exclude_logs=exclude_logs
        )
        yield from self.stub.WatchEnvironment(req)

    def wait(self, name: str, timeout: float | None = None) -> pb.Environment:
        """Blocks until the environment is READY or FAILED; returns it."""
        env = self.get(name)
        if env.state in TERMINAL:
            return env
        req = pb.WatchEnvironmentRequest(name=environment_name(name), exclude_logs=True)
        for resp in self.stub.WatchEnvironment(req, timeout=timeout):
            env = resp.environment
        return env

    def logs(self, name: str, tail: int = 0) -> Iterator[pb.BuildLogLine]:
        token = ""
        while True:
            resp = self.stub.GetEnvironmentLogs(
                pb.GetEnvironmentLogsRequest(name=environment_name(name), page_token=token, tail=tail)
            )
            yield from resp.lines
            token = resp.next_page_token
            if not token:
                return

    # -- builds ---------------------------------------------------------------------------------
    def artifact(self, name: str, env_key: str = "") -> pb.EnvironmentArtifact:
        req = pb.GetEnvironmentArtifactRequest(name=environment_name(name), env_key=env_key)
        return self.stub.GetEnvironmentArtifact(req).artifact

    def files(self, name: str, env_key: str = "") -> Iterator[pb.EnvironmentFile]:
        token = ""
        while True:
            resp = self.stub.ListEnvironmentFiles(
                pb.ListEnvironmentFilesRequest(
                    parent=environment_name(name), page_token=token, env_key=env_key
                )
            )
            yield from resp.files
            token = resp.next_page_token
            if not token:
                return

    def pull(
        self, name: str, directory: Path, progress: Progress | None = None, env_key: str = ""
    ) -> PullResult:
        """Materializes a READY environment into ``directory`` (verified, cached; atomic).
        ``directory/bin/python`` then runs it; a directory that already holds the build is kept."""
        started = time.perf_counter()
        art = self.artifact(name, env_key)
        if directory.is_dir() and read_marker(directory) == art.env_key:
            return PullResult(directory, art.env_key, len(art.layers), art.size_bytes, 0, 0.0, unchanged=True)
        cache = BlobCache(self.cache_dir / "blobs")
        source = LayerSource(self.stub, environment_name(name), art.env_key)
        total = sum(layer.size_bytes for layer in art.layers)
        done = [0, 0]  # bytes handled, bytes fetched
        lock = threading.Lock()

        def ensure(layer: pb.EnvironmentLayer) -> Path:
            path, fetched = cache.ensure(layer.sha256, layer.size_bytes, source)
            with lock:
                done[0] += layer.size_bytes
                done[1] += layer.size_bytes if fetched else 0
                if progress:
                    progress(done[0], total)
            return path

        with ThreadPoolExecutor(8) as pool:
            paths = builtins.list(pool.map(ensure, art.layers))
        install(paths, directory, art.env_key, environment_name(name))
        seconds = time.perf_counter() - started
        return PullResult(directory, art.env_key, len(paths), art.size_bytes, done[1], seconds)

    def materialize(self, name: str, progress: Progress | None = None) -> Path:
        """The job agent's call: the environment unpacked once per build under the cache dir;
        returns its root (run ``<root>/bin/python``)."""
        art = self.artifact(name)
        target = self.cache_dir / "envs" / art.env_key
        if read_marker(target) != art.env_key:
            self.pull(name, target, progress, env_key=art.env_key)
        return target

    # -- leases and garbage collection ----------------------------------------------------------
    def acquire_lease(self, name: str, holder: str, ttl_s: float = 0.0) -> pb.EnvironmentLease:
        ttl = Duration()
        ttl.FromNanoseconds(int(ttl_s * 1e9))
        req = pb.AcquireEnvironmentLeaseRequest(parent=environment_name(name), holder=holder, ttl=ttl)
        return self.stub.AcquireEnvironmentLease(req).lease

    def release_lease(self, lease_name: str) -> None:
        self.stub.ReleaseEnvironmentLease(pb.ReleaseEnvironmentLeaseRequest(name=lease_name))

    def leases(self, name: str) -> builtins.list[pb.EnvironmentLease]:
        req = pb.ListEnvironmentLeasesRequest(parent=environment_name(name), page_size=1000)
        return builtins.list(self.stub.ListEnvironmentLeases(req).leases)

    def gc(
        self, max_total_bytes: int = 0, min_idle_s: float = 0.0, dry_run: bool = False
    ) -> pb.GarbageCollectEnvironmentsResponse:
        idle = Duration()
        idle.FromNanoseconds(int(min_idle_s * 1e9))
        req = pb.GarbageCollectEnvironmentsRequest(
            max_total_bytes=max_total_bytes, min_idle=idle, dry_run=dry_run
        )
        return self.stub.GarbageCollectEnvironments(req)
