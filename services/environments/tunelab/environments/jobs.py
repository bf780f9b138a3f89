"""Build jobs: the background pipeline of one environment, and the sharing rules between them.

resolve (or reuse a fresh resolution of the identical spec) → env_key → reuse the stored build of
that key, or wait for the build of it already in flight, or build it → READY / FAILED.
Two requests that resolve to one key build it once: the first registers a future in the in-flight
map under a lock, the others wait on it.

Replicas share the environments table: the replica running a build owns the environment's row
(``tunelab.common.ownership``) and renews that while it runs, so no other replica resumes it.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

from tunelab.common.errors import NotFound
from tunelab.common.ownership import Ownership, replica_name
from tunelab.environments.builder import Builder
from tunelab.environments.catalog import BuildRecord, Catalog, Resolution
from tunelab.environments.explain import BuildFailed
from tunelab.environments.lock import LAYOUT_VERSION, Target, env_key, parse_lock
from tunelab.environments.metrics import BuildMetrics
from tunelab.environments.registry import EnvRecord, Registry
from tunelab.environments.resolver import Resolver
from tunelab.environments.spec import Spec
from tunelab.environments.tables import environments_t
from tunelab.environments.uv import Interpreter, Redactor, Uv

log = logging.getLogger(__name__)


class BuildLog:
    """An environment's build log: lines are buffered and written at most every quarter second."""

    def __init__(self, registry: Registry, env_id: str, redact: Redactor) -> None:
        self._registry = registry
        self._env_id = env_id
        self._redact = redact
        self._buf: list[tuple[float, str, str]] = []
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, phase: str, text: str) -> None:
        with self._lock:
            self._buf.append((time.time(), phase, self._redact(text)))
            due = time.monotonic() - self._last > 0.25
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._buf = self._buf, []
            self._last = time.monotonic()
        self._registry.append_logs(self._env_id, lines)


class BuildJobs:
    def __init__(
        self,
        registry: Registry,
        catalog: Catalog,
        builder: Builder,
        uv: Uv,
        *,
        workers: int = 2,
        build_timeout_s: float = 1800.0,
        resolve_ttl_s: float = 600.0,
        metrics: BuildMetrics | None = None,
        replica: str = "",
        lease_s: float = 30.0,
    ) -> None:
        """``replica``: this replica's name (TUNELAB_REPLICA_ID; empty: one of its own);
        ``lease_s``: how long its hold on a build lasts unrenewed."""
        self.metrics = metrics or BuildMetrics()
        self.ownership = Ownership(
            registry.engine, environments_t, replica or replica_name("", builder.work_dir), lease_s
        )
        self.registry = registry
        self.catalog = catalog
        self.builder = builder
        self.uv = uv
        self.build_timeout_s = build_timeout_s
        self.resolve_ttl_s = resolve_ttl_s
        self.builds_started = 0
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="build")
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[BuildRecord]] = {}
        self._resolving: dict[str, threading.Lock] = {}
        self._running: dict[str, Future[None]] = {}
        self.resolver = Resolver(uv, resolve_ttl_s)

    # -- the fast path and submission ---------------------------------------------------------
    def resolution_key(self, spec: Spec, python: Interpreter) -> str:
        index = self.uv.default_index_url
        body = f"{LAYOUT_VERSION}|{spec.identity()}|{python.version}|{python.platform}|{index}"
        return hashlib.sha256(body.encode()).hexdigest()

    def _fresh_resolution(self, spec: Spec, python: Interpreter) -> Resolution | None:
        if self.resolve_ttl_s == 0 and not spec.exclude_newer:
            return None
        max_age = None if spec.exclude_newer else self.resolve_ttl_s
        return self.catalog.resolution(self.resolution_key(spec, python), max_age)

    def try_cached(self, rec: EnvRecord, spec: Spec, python: Interpreter) -> EnvRecord | None:
        """READY at once when the identical spec was resolved lately and its build is stored."""
        res = self._fresh_resolution(spec, python)
        build = self.catalog.get_build(res.env_key) if res else None
        if res is None or build is None:
            return None
        self.registry.append_logs(
            rec.id,
            [(time.time(), "resolving", f"cache hit: build {res.env_key[:12]} is stored; nothing to do")],
        )
        done = self.registry.update(
            rec, **self._resolved(res, build.python_version, build.platform), **self._ready(True)
        )
        self._finished(done, "cache_hit")
        return done

    def claim(self, env_id: str) -> bool:
        """Takes the build of ``env_id`` for this replica; False when another live replica runs it."""
        return env_id not in self._running and self.ownership.claim({"id": env_id})

    def submit(self, rec: EnvRecord, spec: Spec, python: Interpreter) -> bool:
        """Builds ``rec`` here, unless another live replica builds it (False)."""
        if not self.claim(rec.id):
            return False
        self._running[rec.id] = self._pool.submit(self._run, rec, spec, python)
        return True

    def renew(self) -> None:
        """Extends this replica's hold on the builds it runs."""
        self.ownership.renew(
            [{"id": env_id} for env_id, future in list(self._running.items()) if not future.done()]
        )

    def wait_idle(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for future in list(self._running.values()):
            future.result(timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- one job ------------------------------------------------------------------------------
    def _run(self, rec: EnvRecord, spec: Spec, python: Interpreter) -> None:
        deadline = time.monotonic() + self.build_timeout_s
        logline = BuildLog(self.registry, rec.id, Redactor(spec.secrets()))
        try:
            target = Target(
                python.version,
                spec.platform or python.platform,
                spec.include_system_site_packages,
                spec.torch_backend,
            )
            rec = self.registry.update(rec, state="RESOLVING", phase="resolving")
            res = self._resolve(rec, spec, python, target, logline, deadline)
            rec = self.registry.update(rec, **self._resolved(res, target.python_version, target.platform))
            hit = self._build_once(rec, res, spec, python, target, logline, deadline)
            logline("ready", "cache hit: reused the stored build" if hit else "ready")
            logline.flush()
            done = self.registry.update(self.registry.get(rec.id), **self._ready(hit))
            self._finished(done, "cache_hit" if hit else "built")
        except NotFound as exc:
            if self.registry.find(rec.id) is not None:  # else it was deleted while being built
                self._fail(rec.id, logline, exc.message)
        except BuildFailed as exc:
            self._fail(rec.id, logline, exc.message)
        except Exception as exc:
            incident = uuid.uuid4().hex[:12]
            log.error("build failed (incident %s)", incident, extra={"environment": rec.name}, exc_info=exc)
            self._fail(
                rec.id, logline, f"internal error (incident {incident}); the service log has the details"
            )
        finally:
            self.ownership.release({"id": rec.id})
            self._running.pop(rec.id, None)

    def _fail(self, env_id: str, logline: BuildLog, message: str) -> None:
        current = self.registry.find(env_id)
        if current is None:
            return
        # The diagnosis; uv's own explanation that follows it in `error` is in the log already.
        logline(current.phase or "failed", message.splitlines()[0])
        logline.flush()
        self._finished(self.registry.update(current, state="FAILED", error=message), "failed")

    def _finished(self, rec: EnvRecord, result: str) -> None:
        seconds = time.time() - rec.create_time
        self.metrics.finished.labels(result).inc()
        if result == "built":
            self.metrics.seconds.observe(seconds)
        extra = {
            "environment": rec.name,
            "env_key": rec.env_key,
            "seconds": round(seconds, 2),
            "result": result,
        }
        log.info("environment %s", rec.state, extra=extra)

    def _resolve(
        self,
        rec: EnvRecord,
        spec: Spec,
        python: Interpreter,
        target: Target,
        logline: BuildLog,
        deadline: float,
    ) -> Resolution:
        key = self.resolution_key(spec, python)
        with self._lock:
            gate = self._resolving.setdefault(key, threading.Lock())
        with gate:  # identical specs resolve once at a time; the second reuses the first's lock
            res = self._fresh_resolution(spec, python)
            if res is not None:
                logline("resolving", f"reusing the resolution of {time.ctime(res.resolve_time)}")
                return res
            logline("resolving", f"resolving with Python {python.version} for {target.platform}")
            work = self.builder.work_dir / f"resolve-{rec.id}-{uuid.uuid4().hex[:8]}"
            work.mkdir(parents=True)
            try:
                text = self.resolver.resolve(spec, python, work, logline, deadline)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            entries = parse_lock(text)
            res = Resolution(env_key(entries, target), text, len(entries), time.time())
            self.catalog.remember_resolution(key, res)
            logline("resolving", f"resolved {_count(len(entries))}: env_key {res.env_key[:12]}")
            return res

    def _build_once(
        self,
        rec: EnvRecord,
        res: Resolution,
        spec: Spec,
        python: Interpreter,
        target: Target,
        logline: BuildLog,
        deadline: float,
    ) -> bool:
        """Makes sure the build of ``res.env_key`` is stored; True when it was not built here."""
        with self._lock:
            if self.catalog.get_build(res.env_key) is not None:
                return True
            future = self._inflight.get(res.env_key)
            owner = future is None
            if future is None:
                future = self._inflight[res.env_key] = Future()
                self.builds_started += 1
        if not owner:
            logline("pending", f"waiting for the build of {res.env_key[:12]} already in progress")
            self.registry.update(self.registry.get(rec.id), state="PENDING", phase="waiting")
            future.result()
            return True

        def set_phase(state: str, phase: str) -> None:
            self.registry.update(self.registry.get(rec.id), state=state, phase=phase)

        try:
            entries = parse_lock(res.lock)
            build = self.builder.build(
                res.env_key, res.lock, entries, spec, python, target, logline, set_phase, deadline
            )
            future.set_result(build)
            return False
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(res.env_key, None)

    @staticmethod
    def _resolved(res: Resolution, python_version: str, platform: str) -> dict[str, object]:
        return {
            "env_key": res.env_key,
            "lock": res.lock,
            "package_count": res.package_count,
            "resolved_python": python_version,
            "resolved_platform": platform,
        }

    @staticmethod
    def _ready(hit: bool) -> dict[str, object]:
        return {"state": "READY", "phase": "ready", "error": "", "cache_hit": hit, "ready_time": time.time()}


def _count(n: int) -> str:
    return f"{n} package" if n == 1 else f"{n} packages"
