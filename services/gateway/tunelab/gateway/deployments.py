"""Deployments: create, change, delete and watch them; load them in the background; check their
replicas; publish the route table the HTTP side reads.

Threads: loads run on a small pool (one load of a deployment at a time), health checks on one
loop thread; every change of a deployment bumps its revision and wakes watchers. The HTTP event
loop never waits on this class: it only reads the route table this class publishes to the
:class:`Router`.

A FAILED deployment serves nothing and holds none of its names: another deployment may take them
(the FAILED one then stays FAILED until it is updated with free names or deleted).
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from tunelab.common.errors import NotFound, TunelabError
from tunelab.gateway.loading import Loader, Replicas, load_error
from tunelab.gateway.metrics import GatewayMetrics
from tunelab.gateway.registry import Registry
from tunelab.gateway.routing import PhaseTimeouts, Route, Router, RouteTable, deployment_routes
from tunelab.gateway.specs import ROUTABLE, Deployment, DeploymentSpec, DeploymentStatus, ReplicaStatus
from tunelab.gateway.supervision import EngineFailed, restart_due_in
from tunelab.gateway.validation import check_spec
from tunelab.gateway.workloads import WorkloadFailed

log = logging.getLogger(__name__)


@dataclass
class _Runtime:
    spec: DeploymentSpec
    status: DeploymentStatus
    replicas: Replicas | None = None
    revision: int = 0
    generation: int = 0  # bumped by every (re)load; a stale load's result is dropped
    loading: threading.Lock = field(default_factory=threading.Lock)  # one load at a time

    def view(self) -> Deployment:
        return Deployment(self.spec, self.status, self.revision)


class DeploymentManager:
    def __init__(
        self,
        registry: Registry,
        loader: Loader,
        router: Router,
        metrics: GatewayMetrics,
        timeouts: PhaseTimeouts,
        *,
        max_in_flight: int = 256,
        health_interval_s: float = 5.0,
        drain_timeout_s: float = 30.0,
    ) -> None:
        self.registry, self.loader, self.router, self.metrics = registry, loader, router, metrics
        self.timeouts, self.max_in_flight = timeouts, max_in_flight
        self.health_interval_s, self.drain_timeout_s = health_interval_s, drain_timeout_s
        self._runtimes: dict[str, _Runtime] = {}
        self._changed = threading.Condition(threading.RLock())
        # Workload loads wait for the trainer's queue: enough threads that those do not hold up the rest.
        self._loads = ThreadPoolExecutor(8, thread_name_prefix="deploy-load")
        self._stop = threading.Event()
        self._health = threading.Thread(target=self._health_loop, name="deploy-health", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Reloads the deployments stored by an earlier run and starts the health checks."""
        stored = self.registry.deployments()
        # Deployments that were serving first: a FAILED one whose names another took stays FAILED.
        for s in sorted(stored, key=lambda s: s.state == "FAILED"):
            serving = [r.spec for r in self._runtimes.values() if r.status.state != "FAILED"]
            clash = next((o for o in serving if set(o.served_names()) & set(s.spec.served_names())), None)
            now = time.time()
            if clash is not None:
                error = f"{s.error} (its names are now served by deployment {clash.id!r})"
                status = DeploymentStatus("FAILED", error, (), s.create_time, now, s.ready_time)
                self._runtimes[s.spec.id] = _Runtime(s.spec, status)
                continue
            status = DeploymentStatus("PENDING", "", (), s.create_time, now, s.ready_time)
            self._runtimes[s.spec.id] = rt = _Runtime(s.spec, status)
            self._submit_load(rt)
        self._loads.submit(self._quietly, self.loader.sweep, {s.spec.id for s in stored})
        self._health.start()

    def close(self) -> None:
        self._stop.set()
        self._loads.shutdown(wait=False, cancel_futures=True)
        with self._changed:
            runtimes = list(self._runtimes.values())
        for rt in runtimes:
            if rt.replicas is not None and rt.replicas.embedded is not None:
                rt.replicas.embedded.stop()

    # -- the API ------------------------------------------------------------------------------
    def create(self, spec: DeploymentSpec) -> Deployment:
        """A new deployment; one of the same id that FAILED is replaced (reloaded with ``spec``)."""
        with self._changed:
            spec = check_spec(spec, self._serving())
            failed = self._runtimes.get(spec.id)
            if failed is not None and failed.status.state == "FAILED":
                return self._reload(failed, spec)
            now = time.time()
            self.registry.add_deployment(spec, now)
            rt = self._runtimes[spec.id] = _Runtime(spec, DeploymentStatus("PENDING", "", (), now, now))
            self._submit_load(rt)
            return rt.view()

    def get(self, deployment_id: str) -> Deployment:
        with self._changed:
            return self._runtime(deployment_id).view()

    def list(self, page_token: str = "", page_size: int = 0) -> tuple[list[Deployment], str]:
        size = page_size if 0 < page_size <= 1000 else 100
        with self._changed:
            ids = sorted(i for i in self._runtimes if i > page_token)
            page = [self._runtimes[i].view() for i in ids[:size]]
        return page, (ids[size - 1] if len(ids) > size else "")

    def update(self, spec: DeploymentSpec) -> Deployment:
        """Replaces the spec (already merged with the update mask) and reloads the deployment."""
        with self._changed:
            rt = self._runtime(spec.id)
            spec = check_spec(spec, self._serving(but=spec.id))
            return self._reload(rt, spec)

    def _reload(self, rt: _Runtime, spec: DeploymentSpec) -> Deployment:
        old = (rt.spec, rt.replicas)
        rt.spec, rt.replicas = spec, None
        self._set(rt, "PENDING", "", ())
        self._submit_load(rt, stop_first=old)
        return rt.view()

    def delete(self, deployment_id: str) -> None:
        """Stops routing, lets in-flight requests finish (up to the drain timeout), unloads."""
        with self._changed:
            rt = self._runtime(deployment_id)
            rt.generation += 1
            self._set(rt, "DELETING", "", rt.status.replicas)
        deadline = time.monotonic() + self.drain_timeout_s
        while self.router.deployment_in_flight.get(deployment_id, 0) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if rt.replicas is not None:
            self.loader.unload(rt.spec, rt.replicas)
        self._quietly(self.loader.release, rt.spec)  # a load racing this one releases too
        with self._changed:
            self.registry.remove_deployment(deployment_id)
            del self._runtimes[deployment_id]
            rt.revision += 1
            self._changed.notify_all()
        self.metrics.forget_deployment(deployment_id)
        self._publish()

    def watch(
        self, deployment_id: str, active: Callable[[], bool] = lambda: True, poll_s: float = 1.0
    ) -> Iterator[Deployment]:
        """The deployment now and after each change; ends when it is deleted or ``active()`` turns
        false (checked at least every ``poll_s``)."""
        seen = -1
        while active() and not self._stop.is_set():
            with self._changed:
                rt = self._runtimes.get(deployment_id)
                if rt is None:
                    if seen < 0:
                        raise NotFound(f"deployment {deployment_id!r} does not exist")
                    return
                if rt.revision == seen:
                    self._changed.wait(poll_s)
                    continue
                seen, view = rt.revision, rt.view()
            yield view

    # -- internals ----------------------------------------------------------------------------
    def _serving(self, but: str = "") -> builtins.list[DeploymentSpec]:
        """The deployments holding their names: all but the FAILED ones (and ``but``)."""
        return [r.spec for r in self._runtimes.values() if r.status.state != "FAILED" and r.spec.id != but]

    def _gone(self, rt: _Runtime) -> bool:
        return rt.status.state == "DELETING" or self._runtimes.get(rt.spec.id) is not rt

    @staticmethod
    def _quietly(fn: Callable[..., None], *args: Any) -> None:
        """Cleanup that must not fail what called it (the trainer may be away): logged instead."""
        try:
            fn(*args)
        except TunelabError as exc:
            log.warning("%s: %s", getattr(fn, "__name__", "cleanup"), exc.message)
        except Exception:
            log.exception("%s failed", getattr(fn, "__name__", "cleanup"))

    def _runtime(self, deployment_id: str) -> _Runtime:
        rt = self._runtimes.get(deployment_id)
        if rt is None:
            raise NotFound(f"deployment {deployment_id!r} does not exist; `tunelab model ls` lists them")
        return rt

    def _set(self, rt: _Runtime, state: str, error: str, replicas: tuple[ReplicaStatus, ...]) -> None:
        """Records a new status (caller holds the lock), persists it, wakes watchers, republishes."""
        now = time.time()
        ready = now if state == "READY" and rt.status.state != "READY" else rt.status.ready_time
        rt.status = DeploymentStatus(state, error, replicas, rt.status.create_time, now, ready)
        rt.revision += 1
        if state != "DELETING":
            self.registry.save_deployment(rt.spec, state, error, now, ready)
        healthy = sum(r.healthy for r in replicas)
        self.metrics.set_replicas(rt.spec.id, healthy, len(replicas) - healthy)
        self._changed.notify_all()
        self._publish()

    def _submit_load(
        self, rt: _Runtime, stop_first: tuple[DeploymentSpec, Replicas | None] | None = None
    ) -> None:
        rt.generation += 1
        self._loads.submit(self._load, rt, rt.generation, rt.spec, stop_first)

    def _load(
        self,
        rt: _Runtime,
        generation: int,
        spec: DeploymentSpec,
        stop_first: tuple[DeploymentSpec, Replicas | None] | None,
    ) -> None:
        with rt.loading:
            if stop_first is not None:
                old_spec, old = stop_first
                if old is not None:
                    self.loader.unload(old_spec, old)
                if spec.upstream.kind != "workload":
                    self._quietly(self.loader.release, old_spec)
            self._load_current(rt, generation, spec)

    def _load_current(self, rt: _Runtime, generation: int, spec: DeploymentSpec) -> None:
        with self._changed:
            if rt.generation != generation:
                return
            self._set(rt, "LOADING", "", ())

        def cancelled() -> bool:
            return self._stop.is_set() or rt.generation != generation

        replicas = None
        try:
            spec, replicas = self.loader.load(spec)
            statuses = self.loader.wait_ready(
                spec, replicas, cancelled, lambda s: self._progress(rt, generation, s)
            )
        except Exception as exc:
            if self._stop.is_set():  # the gateway is stopping: the next start loads it again
                if replicas is not None:
                    self.loader.unload(spec, replicas)
                return
            log.warning(
                "deployment %s failed to load: %s",
                rt.spec.id,
                exc,
                exc_info=not isinstance(exc, OSError | TunelabError),  # those say all there is
            )
            with self._changed:
                current = rt.generation == generation
                if current:
                    self._set(rt, "FAILED", load_error(exc), ())
            if replicas is not None:
                self.loader.unload(spec, replicas)
            self._after_load(rt, spec, current, failed=True)
            return
        if self._stop.is_set():  # cut short, not failed: a workload's jobs are reused at the next start
            self.loader.unload(spec, replicas)
            return
        with self._changed:
            current = rt.generation == generation
            if current:
                rt.spec, rt.replicas = spec, replicas
                self._apply_health(rt, tuple(statuses), initial=True)
        if not current:
            self.loader.unload(spec, replicas)
        self._after_load(rt, spec, current, failed=rt.status.state == "FAILED")

    def _after_load(self, rt: _Runtime, spec: DeploymentSpec, current: bool, failed: bool) -> None:
        """A FAILED load cancels its replica jobs (kept for their logs); a load that lost the race
        with a delete removes the jobs it may have submitted after the delete looked for them (an
        update's own load keeps or replaces them)."""
        with self._changed:
            gone = self._gone(rt)
        if current and failed:
            self._quietly(self.loader.failed, spec)
        elif not current and gone:
            self._quietly(self.loader.release, spec)

    def _progress(self, rt: _Runtime, generation: int, statuses: builtins.list[ReplicaStatus]) -> None:
        """Replica statuses while a load waits (a workload's jobs queued, starting, loading)."""
        with self._changed:
            if rt.generation != generation or rt.status.state != "LOADING":
                return
            if [(s.url, s.healthy, s.error, s.job) for s in statuses] != [
                (s.url, s.healthy, s.error, s.job) for s in rt.status.replicas
            ]:
                self._set(rt, "LOADING", "", tuple(statuses))

    def _apply_health(self, rt: _Runtime, statuses: tuple[ReplicaStatus, ...], initial: bool = False) -> None:
        healthy = [s for s in statuses if s.healthy]
        # Embedded replicas by index: a restarted engine may come back on another port.
        embedded = rt.spec.upstream.kind == "embedded"
        errors = "; ".join(
            f"{f'replica {i}' if embedded else s.url or s.job}: {s.error}"
            for i, s in enumerate(statuses)
            if not s.healthy
        )
        if len(healthy) == len(statuses):
            state, error = "READY", ""
        elif healthy or not initial or (rt.spec.upstream.kind == "vllm" and all(s.waiting for s in statuses)):
            # vLLM servers started elsewhere that do not answer yet: checked on until they do
            state, error = "DEGRADED", errors
        else:
            state, error = "FAILED", errors or "no replica became healthy"

        def key(s: ReplicaStatus) -> tuple[object, ...]:
            return (s.url, s.healthy, s.models, s.error, s.restarts)

        same = [key(s) for s in statuses] == [key(s) for s in rt.status.replicas]
        if same and (state, error) == (rt.status.state, rt.status.error):
            rt.status = replace(rt.status, replicas=statuses)  # only the check times moved
            return
        if state != rt.status.state:
            log.info("deployment %s is %s", rt.spec.id, state, extra={"error": error})
        self._set(rt, state, error, statuses)

    def _health_loop(self) -> None:
        while not self._stop.wait(self._next_check_s()):
            with self._changed:
                todo = [
                    (rt, rt.generation)
                    for rt in self._runtimes.values()
                    if rt.status.state in ("READY", "DEGRADED")
                ]
            for rt, generation in todo:
                if rt.replicas is None:
                    continue
                try:
                    statuses = tuple(self.loader.check_all(rt.spec, rt.replicas))
                except (WorkloadFailed, EngineFailed) as exc:
                    with self._changed:
                        if rt.generation != generation:
                            continue
                        log.warning("deployment %s failed: %s", rt.spec.id, exc.message)
                        self._set(rt, "FAILED", exc.message, ())
                    self._quietly(self.loader.failed, rt.spec)
                    continue
                except Exception:  # the loop must go on checking (and restarting) the others
                    log.exception("deployment %s: checking its replicas failed", rt.spec.id)
                    continue
                with self._changed:
                    if rt.generation == generation and rt.status.state in ("READY", "DEGRADED"):
                        self._apply_health(rt, statuses)

    def _next_check_s(self) -> float:
        """The health interval, or less when an engine is due to be started again sooner."""
        with self._changed:
            due = [restart_due_in(r.replicas.embedded) for r in self._runtimes.values() if r.replicas]
        return max(0.05, min([self.health_interval_s, *due]))

    def _publish(self) -> None:
        routes: dict[str, Route] = {}
        ready: dict[str, bool] = {}
        for rt in self._runtimes.values():
            spec, status = rt.spec, rt.status
            if status.state == "DELETING":
                continue
            ready[spec.id] = status.state in ("READY", "DEGRADED") and any(r.healthy for r in status.replicas)
            if status.state in ROUTABLE and rt.replicas is not None:
                urls, base = tuple(rt.replicas.urls), rt.replicas.base_name
                keys = rt.replicas.api_keys(spec.upstream.api_key)
                routes.update(
                    deployment_routes(spec, status, urls, base, self.timeouts, self.max_in_flight, keys)
                )
        self.router.publish(RouteTable(routes, ready))
