"""EnvironmentStore: the environments service's domain object. The gRPC servicer is a thin layer
over it; its backends (state, blob store, uv, builder) come in through the constructor."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tunelab.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tunelab.common.names import check_id, parse_name
from tunelab.common.netguard import AddressPolicy, NetPolicy
from tunelab.common.ownership import Keeper
from tunelab.common.storage.blobs import BlobStore
from tunelab.common.storage.manifest import FileEntry, Manifest
from tunelab.environments.builder import manifest_key
from tunelab.environments.catalog import BuildRecord, Catalog, LeaseRecord
from tunelab.environments.egress import check_egress
from tunelab.environments.gc import Collector, GcResult
from tunelab.environments.jobs import BuildJobs
from tunelab.environments.limits import check_metadata, check_spec
from tunelab.environments.registry import EnvRecord, LogLine, Registry
from tunelab.environments.spec import Spec, validate
from tunelab.environments.uv import Uv

MAX_LEASE_S = 30 * 24 * 3600.0


@dataclass(frozen=True)
class EnvView:
    """An environment as the API shows it: its record, its stored build, its lease count."""

    record: EnvRecord
    build: BuildRecord | None
    active_leases: int


class EnvironmentStore:
    def __init__(
        self,
        registry: Registry,
        catalog: Catalog,
        jobs: BuildJobs,
        collector: Collector,
        uv: Uv,
        blobs: BlobStore,
        *,
        allow_unsafe: bool = False,
        net_policy: AddressPolicy = NetPolicy("environments"),
        lease_ttl_s: float = 3600.0,
        gc_budget: int = 50 * 1024**3,
        replica_lease_s: float = 30.0,
    ) -> None:
        self.registry = registry
        self.catalog = catalog
        self.jobs = jobs
        self.collector = collector
        self.uv = uv
        self.blobs = blobs
        self.allow_unsafe = allow_unsafe
        self.net_policy = net_policy
        self.lease_ttl_s = lease_ttl_s
        self.gc_budget = gc_budget
        self._keeper = Keeper("build-leases", replica_lease_s, self._keep)

    # -- environments -------------------------------------------------------------------------
    def create(
        self,
        env_id: str,
        spec: Spec,
        description: str = "",
        labels: dict[str, str] | None = None,
        replace: bool = False,
    ) -> EnvView:
        env_id = check_id(env_id, "environment_id")
        check_spec(spec)
        check_metadata(description, labels or {})
        validate(spec, self.allow_unsafe)
        check_egress(spec, self.net_policy)
        python = self.uv.find_python(spec.python_version)
        rec = EnvRecord(
            env_id, spec.to_dict(), spec.identity(), time.time(), description, labels or {}, phase="pending"
        )
        existing = self.registry.find(env_id)
        if existing is not None:
            same = existing.spec_identity == rec.spec_identity
            if same and not (replace and existing.state == "FAILED"):
                return self.view(existing)
            if not replace:
                raise AlreadyExists(
                    f"environment {env_id!r} exists with a different spec: pass replace (--replace) to "
                    "rebuild it under this name, or pick another name"
                )
            rec = self.registry.replace_row(rec)
        else:
            try:
                rec = self.registry.insert(rec)
            except AlreadyExists:  # a concurrent create of the same name won
                return self.create(env_id, spec, description, labels, replace)
        ready = self.jobs.try_cached(rec, spec, python)
        if ready is None and self.jobs.submit(rec, spec, python):
            self._keeper.start()
        return self.view(ready or rec)

    def view(self, rec: EnvRecord) -> EnvView:
        build = self.catalog.get_build(rec.env_key) if rec.state == "READY" else None
        return EnvView(rec, build, len(self.catalog.active_leases(rec.id)))

    def get(self, env_id: str) -> EnvView:
        return self.view(self.registry.get(check_id(env_id, "environment")))

    def list_environments(self, page_token: str, page_size: int) -> tuple[list[EnvView], str]:
        size = _page_size(page_size)
        before = None
        if page_token:
            t, _, ident = page_token.partition(":")
            try:
                before = (float(t), ident)
            except ValueError:
                raise InvalidArgument(
                    f"page_token {page_token!r} did not come from ListEnvironments"
                ) from None
        items = self.registry.page(before, size)
        token = list_token(items[-1]) if len(items) == size else ""
        return [self.view(r) for r in items], token

    def delete(self, env_id: str, force: bool = False) -> None:
        rec = self.registry.get(check_id(env_id, "environment"))
        leases = self.catalog.active_leases(rec.id)
        if leases and not force:
            holders = ", ".join(lease.holder for lease in leases[:3])
            raise FailedPrecondition(
                f"environment {env_id!r} has {len(leases)} active lease(s) (held by {holders}): wait for "
                "them to be released, or delete with force (--force)"
            )
        self.catalog.drop_leases(rec.id)
        self.registry.delete(rec.id)
        self.collector.sweep()

    def watch(
        self, env_id: str, after_line: int, exclude_logs: bool, active: Callable[[], bool] = lambda: True
    ) -> Iterator[tuple[EnvView, list[LogLine]]]:
        self.registry.get(check_id(env_id, "environment"))
        for rec, lines in self.registry.watch(env_id, after_line, not exclude_logs, active):
            yield self.view(rec), lines

    def logs(self, env_id: str, page_token: str, page_size: int, tail: int) -> tuple[list[LogLine], str]:
        rec = self.registry.get(check_id(env_id, "environment"))
        size = _page_size(page_size, default=1000, maximum=10000)
        if tail > 0 and not page_token:
            after = max(0, self.registry.log_count(rec.id) - tail)
            return self.registry.logs(rec.id, after, tail), ""
        after = int(page_token) if page_token.isdigit() else 0
        lines = self.registry.logs(rec.id, after, size)
        return lines, (str(lines[-1].number) if len(lines) == size else "")

    def resume_unfinished(self) -> int:
        """Restarts the builds no live replica holds: this replica's own that a restart interrupted,
        and those of a replica that stopped renewing its hold (it died). Builds whose index
        passwords were not kept fail. From then on a keeper renews this replica's holds and does
        this every third of the lease."""
        resumed = 0
        for rec in self.registry.unfinished():
            if not self.jobs.claim(rec.id):
                continue  # another replica builds it, or this one does already
            spec = Spec.from_dict(rec.spec)
            if spec.withheld_secrets():
                self._fail_resumed(
                    rec,
                    "the service restarted during the build, and index passwords are never stored: "
                    "create the environment again (with replace)",
                )
                continue
            try:
                python = self.uv.find_python(spec.python_version)
            except InvalidArgument as exc:
                self._fail_resumed(rec, exc.message)
                continue
            if self.jobs.submit(self.registry.update(rec, state="PENDING", phase="pending"), spec, python):
                resumed += 1
        self._keeper.start()
        return resumed

    def _fail_resumed(self, rec: EnvRecord, error: str) -> None:
        self.registry.update(rec, state="FAILED", error=error)
        self.jobs.ownership.release({"id": rec.id})

    def _keep(self) -> None:
        self.jobs.renew()
        self.resume_unfinished()

    # -- stored builds ------------------------------------------------------------------------
    def artifact(self, env_id: str, env_key: str = "") -> BuildRecord:
        rec = self.registry.get(check_id(env_id, "environment"))
        if not env_key and rec.state != "READY":
            raise FailedPrecondition(
                f"environment {env_id!r} is {rec.state}, not READY: wait for it "
                f"(`tunelab env logs -f {env_id}`)"
            )
        key = env_key or rec.env_key
        allowed = {rec.env_key} | {lease.env_key for lease in self.catalog.active_leases(rec.id)}
        build = self.catalog.get_build(key) if key in allowed else None
        if build is None:
            raise NotFound(f"environment {env_id!r} has no stored build {key[:12]!r} (current or leased)")
        self.registry.touch(rec.id)
        return build

    def files(
        self, env_id: str, env_key: str, page_token: str, page_size: int
    ) -> tuple[list[FileEntry], str]:
        build = self.artifact(env_id, env_key)
        key = manifest_key(build.env_key)
        manifest = Manifest.from_json(self.blobs.store.get_bytes(key), key)
        start = int(page_token) if page_token.isdigit() else 0
        size = _page_size(page_size, default=1000, maximum=10000)
        nxt = str(start + size) if start + size < len(manifest.files) else ""
        return manifest.files[start : start + size], nxt

    def read(self, env_id: str, env_key: str, layer_sha256: str, offset: int) -> Iterator[bytes]:
        build = self.artifact(env_id, env_key)
        layer = next((x for x in build.layers if x.sha256 == layer_sha256), None)
        if layer is None:
            raise InvalidArgument(
                f"layer_sha256 {layer_sha256!r} is not a layer of {env_id!r}'s build: this build is stored "
                "as layers; read each of the artifact's layers"
            )
        if not 0 <= offset <= layer.size:
            raise InvalidArgument(f"offset {offset} is outside the layer's {layer.size} bytes")
        return _skip(self.blobs.iter_chunks(layer.sha256), offset)

    # -- leases and garbage collection --------------------------------------------------------
    def acquire_lease(self, env_id: str, holder: str, ttl_s: float) -> LeaseRecord:
        rec = self.registry.get(check_id(env_id, "environment"))
        if not holder:
            raise InvalidArgument("holder: say who holds the lease, e.g. jobs/abc/attempts/2")
        if rec.state != "READY":
            raise FailedPrecondition(f"environment {env_id!r} is {rec.state}; only a READY one can be leased")
        if ttl_s < 0:
            raise InvalidArgument("ttl must not be negative")
        self.registry.touch(rec.id)
        return self.catalog.acquire(rec.id, holder, rec.env_key, min(ttl_s or self.lease_ttl_s, MAX_LEASE_S))

    def release_lease(self, name: str) -> None:
        env_part, sep, lease_id = name.rpartition("/leases/")
        if not sep or not lease_id:
            raise InvalidArgument(f"{name!r} is not an environments/{{environment}}/leases/{{lease}} name")
        self.catalog.release(parse_name(env_part, "environments", "name"), lease_id)

    def leases(self, env_id: str, page_token: str, page_size: int) -> tuple[list[LeaseRecord], str]:
        self.registry.get(check_id(env_id, "environment"))
        active = self.catalog.active_leases(env_id)
        start = int(page_token) if page_token.isdigit() else 0
        size = _page_size(page_size)
        return active[start : start + size], (str(start + size) if start + size < len(active) else "")

    def garbage_collect(self, max_total_bytes: int, min_idle_s: float, dry_run: bool) -> GcResult:
        if max_total_bytes < 0 or min_idle_s < 0:
            raise InvalidArgument("max_total_bytes and min_idle must not be negative")
        return self.collector.collect(max_total_bytes or self.gc_budget, min_idle_s, dry_run)

    def close(self) -> None:
        self._keeper.stop()
        self.jobs.close()


def _skip(chunks: Iterator[bytes], offset: int) -> Iterator[bytes]:
    for chunk in chunks:
        if offset >= len(chunk):
            offset -= len(chunk)
            continue
        yield chunk[offset:]
        offset = 0


def list_token(rec: EnvRecord) -> str:
    """The ListEnvironments page_token that continues after ``rec``."""
    return f"{rec.create_time!r}:{rec.id}"


def _page_size(requested: int, default: int = 100, maximum: int = 1000) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or default, maximum)
