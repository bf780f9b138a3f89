"""Bringing a deployment's replicas up and checking them: materialize weights, start embedded
engines, find the vLLM servers or have the trainer run workload replicas (``workloads.py``), load
LoRA adapters, and tell healthy from not (``/health`` 200 and every served name listed by
``/v1/models``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tunelab.common.errors import FailedPrecondition, TunelabError, Unavailable
from tunelab.gateway.engines import EngineLauncher, EngineProcess
from tunelab.gateway.modelcheck import check_model_dir
from tunelab.gateway.models import ModelFetcher
from tunelab.gateway.specs import Adapter, DeploymentSpec, ReplicaStatus
from tunelab.gateway.supervision import EngineReplicas, Supervisor
from tunelab.gateway.upstream.control import ReplicaClient, ServedModel
from tunelab.gateway.workloads import Workloads, source_ref

log = logging.getLogger(__name__)


@dataclass
class Replicas:
    """What a loaded deployment runs on."""

    urls: list[str]
    base_candidates: set[str]  # names or paths the replicas may list the base model under
    adapter_paths: dict[str, str]  # adapter name → path as the replica sees it
    embedded: EngineReplicas | None = None  # embedded: the engines, supervised (``supervision.py``)
    jobs: list[str] = field(default_factory=list)  # workload: the job of each replica, as ``urls``
    notes: list[str] = field(default_factory=list)  # workload: why a replica has no URL (yet)
    restarts: list[tuple[int, str]] = field(default_factory=list)  # workload: each job's, and why
    base_name: str = ""  # the base model's name on the replicas, once seen
    workload_key: str = field(default="", repr=False)  # workload: the key its servers require
    _clients: dict[str, ReplicaClient] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def engines(self) -> list[EngineProcess]:
        return self.embedded.engines if self.embedded is not None else []

    def api_key(self, url: str, default: str) -> str:
        """The key replica ``url`` requires: an embedded engine's own, a workload's, else ``default``
        (the deployment's ``upstream.api_key`` for vLLM servers started elsewhere)."""
        engine = next((e for e in self.engines if e.url == url), None)
        if engine is not None:
            return engine.api_key
        return self.workload_key or default

    def api_keys(self, default: str) -> dict[str, str]:
        """``api_key`` of every replica with a URL, by URL (for the routes)."""
        return {url: self.api_key(url, default) for url in self.urls if url}

    def client(self, url: str, api_key: str, timeout_s: float) -> ReplicaClient:
        """One control client per replica, kept for the deployment's life: building an HTTP client
        (its TLS context) costs tens of milliseconds of CPU, which the request path would feel
        on every health check. ``api_key``: the deployment's; a replica with its own wins."""
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                key = self.api_key(url, api_key)
                client = self._clients[url] = ReplicaClient(url, key, timeout_s=timeout_s)
            return client

    def drop_client(self, url: str) -> None:
        with self._lock:
            client = self._clients.pop(url, None)
        if client is not None:
            client.close()

    def replaced(self, index: int, old_url: str, new_url: str) -> None:
        """Replica ``index`` runs a new engine (its own key, maybe another port)."""
        self.drop_client(old_url)
        self.urls[index] = new_url

    def close_clients(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


class Loader:
    def __init__(
        self,
        fetcher: ModelFetcher,
        launcher: EngineLauncher,
        load_timeout_s: float,
        health_timeout_s: float = 5.0,
        workloads: Workloads | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.supervisor = supervisor or Supervisor()
        self.launcher = launcher
        self.load_timeout_s = load_timeout_s
        self.health_timeout_s = health_timeout_s
        self._workloads = workloads

    @property
    def workloads(self) -> Workloads:
        if self._workloads is None:
            raise FailedPrecondition("this gateway has no trainer to run workload replicas on")
        return self._workloads

    def load(self, spec: DeploymentSpec) -> tuple[DeploymentSpec, Replicas]:
        """Materializes weights and starts or finds the replicas; returns the spec with resolved
        dataset versions. Does not wait for health (see ``wait_ready``)."""
        if spec.upstream.kind == "workload":
            started = self.workloads.start(spec)
            n = len(started.jobs)
            base = {spec.model_name, started.files.base}
            return started.spec, Replicas(
                [""] * n,
                base,
                dict(started.files.adapters),
                jobs=started.jobs,
                notes=["submitted"] * n,
                workload_key=started.api_key,
            )
        base_path, base_version = self.fetcher.resolve(spec.base)
        adapters, paths = [], {}
        for a in spec.adapters:
            path, version = self.fetcher.resolve(a.source)
            adapters.append(Adapter(a.name, replace(a.source, resolved_version=version)))
            paths[a.name] = path
        spec = spec.with_changes(
            base=replace(spec.base, resolved_version=base_version), adapters=tuple(adapters)
        )
        up = spec.upstream
        if up.kind == "embedded":
            ref = source_ref(spec.base, base_version)
            check_model_dir(base_path, ref, up.trust_remote_code, "upstream.embedded.trust_remote_code")
            # Runtime adapter loads: from the materialized model store, or an adapter's own path.
            roots = (self.fetcher.root, *(paths[a.name] for a in spec.adapters if a.source.path))

            def launch(i: int, port: int) -> EngineProcess:
                name = f"{spec.id}-{i}"
                return self.launcher.start(name, base_path, spec.model_name, paths, up, roots, port=port)

            engines = EngineReplicas(f"deployment {spec.id}", launch, max(1, spec.replicas))
            adapter_paths = {k: str(v) for k, v in paths.items()}
            return spec, Replicas([e.url for e in engines.engines], {spec.model_name}, adapter_paths, engines)
        seen = {n: self._upstream_path(p, up.model_dir) for n, p in paths.items()}
        base = {spec.model_name, self._upstream_path(base_path, up.model_dir)}
        if spec.base.path:
            base.add(spec.base.path)
        return spec, Replicas(list(up.base_urls), base, seen)

    def _upstream_path(self, local: Path, model_dir: str) -> str:
        if model_dir:
            try:
                return str(Path(model_dir) / local.relative_to(self.fetcher.root))
            except ValueError:
                pass
        return str(local)

    def wait_ready(
        self,
        spec: DeploymentSpec,
        replicas: Replicas,
        cancelled: Callable[[], bool] = lambda: False,
        progress: Callable[[list[ReplicaStatus]], None] = lambda _: None,
    ) -> list[ReplicaStatus]:
        """Checks every replica: vLLM servers started elsewhere until one answers (a server still
        starting, or not yet up after a restart of the stack) or the load timeout; embedded engines
        until each is healthy or given up (an engine that exits while loading is started again, up to
        its tries; EngineFailed when all were given up), or the load timeout; workload replicas until
        all are healthy, one's job has ended (WorkloadFailed), or the load timeout counted from when every
        job runs (time in the trainer's queue does not count). The health loop takes over from there."""
        if replicas.jobs:
            return self._wait_jobs(spec, replicas, cancelled, progress)
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            statuses = self.check_all(spec, replicas)
            if (
                (replicas.embedded is None and not all(s.waiting for s in statuses))
                or (replicas.embedded is not None and replicas.embedded.settled(statuses))
                or time.monotonic() > deadline
                or cancelled()
            ):
                return statuses
            progress(statuses)  # an engine that died while loading, and its restart
            time.sleep(0.5)

    def _wait_jobs(
        self,
        spec: DeploymentSpec,
        replicas: Replicas,
        cancelled: Callable[[], bool],
        progress: Callable[[list[ReplicaStatus]], None],
    ) -> list[ReplicaStatus]:
        deadline: float | None = None
        while True:
            statuses = self.check_all(spec, replicas)
            if all(s.healthy for s in statuses) or cancelled():
                return statuses
            if all(replicas.urls):
                deadline = deadline or time.monotonic() + self.load_timeout_s
                if time.monotonic() > deadline:
                    return statuses
            else:
                deadline = None
            progress(statuses)
            time.sleep(1.0)

    def check_all(self, spec: DeploymentSpec, replicas: Replicas) -> list[ReplicaStatus]:
        """Every replica's status; workload replicas first follow their jobs to their endpoints
        (WorkloadFailed when a job has ended); embedded engines that exited are started again
        (``supervision.py``; EngineFailed when every one was given up)."""
        if replicas.embedded is not None:
            return self.supervisor.check(
                replicas.embedded, lambda url: self.check(spec, replicas, url), replicas.replaced
            )
        if not replicas.jobs:
            return [self.check(spec, replicas, url) for url in replicas.urls]
        try:
            views = self.workloads.follow(replicas.jobs)
        except Unavailable as exc:  # the trainer is away: the replicas may well serve on
            log.warning("deployment %s: cannot read its replica jobs: %s", spec.id, exc.message)
        else:
            for i, view in enumerate(views):
                if replicas.urls[i] and replicas.urls[i] != view.url:
                    log.info(
                        "deployment %s: replica %s moved from %s", spec.id, replicas.jobs[i], replicas.urls[i]
                    )
                    replicas.drop_client(replicas.urls[i])
                replicas.urls[i], replicas.notes[i] = view.url, view.note
            replicas.restarts = [(v.restarts, v.restart_reason) for v in views]
        now = time.time()
        restarts = replicas.restarts or [(0, "")] * len(replicas.jobs)
        return [
            replace(
                self.check(spec, replicas, url)
                if url
                else ReplicaStatus("", False, error=note, last_check_time=now),
                job=job,
                restarts=n,
                restart_reason=why,
            )
            for url, job, note, (n, why) in zip(
                list(replicas.urls), replicas.jobs, replicas.notes, restarts, strict=True
            )
        ]

    def check(self, spec: DeploymentSpec, replicas: Replicas, url: str) -> ReplicaStatus:
        client = replicas.client(url, spec.upstream.api_key, self.health_timeout_s)
        try:
            client.health()
            served = client.models()
            missing = self._ensure_adapters(client, spec, replicas, served)
            if missing is None:
                served = client.models()
                missing = self._missing(spec, replicas, served)
            if missing:
                raise FailedPrecondition(missing)
            return ReplicaStatus(url, True, tuple(m.id for m in served), last_check_time=time.time())
        except Unavailable as exc:
            return ReplicaStatus(url, False, error=exc.message, last_check_time=time.time(), waiting=True)
        except TunelabError as exc:
            return ReplicaStatus(url, False, error=exc.message, last_check_time=time.time())

    def _missing(self, spec: DeploymentSpec, replicas: Replicas, served: list[ServedModel]) -> str:
        """What the replica lacks, as a message with the fix; empty when it serves everything."""
        base = next(
            (m.id for m in served if m.id in replicas.base_candidates or m.root in replicas.base_candidates),
            "",
        )
        if not base:
            listed = ", ".join(m.id for m in served) or "nothing"
            want = sorted(replicas.base_candidates - {spec.model_name})
            return (
                f"the replica serves {listed}, not the base model of {spec.model_name!r}; start vLLM "
                f"with `vllm serve {want[0] if want else 'BASE'} --served-model-name {spec.model_name} "
                "--enable-lora`"
            )
        replicas.base_name = base
        ids = {m.id for m in served}
        lacking = [a.name for a in spec.adapters if a.name not in ids]
        if lacking:
            mods = " ".join(f"{n}={replicas.adapter_paths[n]}" for n in lacking)
            return (
                f"adapters {', '.join(lacking)} are not loaded; start vLLM with --enable-lora "
                f"--lora-modules {mods}"
            )
        return ""

    def _ensure_adapters(
        self, client: ReplicaClient, spec: DeploymentSpec, replicas: Replicas, served: list[ServedModel]
    ) -> str | None:
        """Loads adapters the replica lacks (vLLM restarted, or runtime loading); None when it
        loaded any (list again), else the message of what is missing."""
        ids = {m.id for m in served}
        lacking = [a.name for a in spec.adapters if a.name not in ids]
        if not lacking:
            return self._missing(spec, replicas, served)
        for name in lacking:
            client.load_adapter(name, replicas.adapter_paths[name])
            log.info("loaded adapter %s into %s", name, client.base_url)
        return None

    def release(self, spec: DeploymentSpec) -> None:
        """A deleted (or no longer workload) deployment: cancels and deletes its replica jobs."""
        if spec.upstream.kind == "workload":
            self.workloads.stop(spec.id)

    def failed(self, spec: DeploymentSpec) -> None:
        """A FAILED deployment: cancels the replica jobs that still run (kept for their logs)."""
        if spec.upstream.kind == "workload":
            self.workloads.cancel(spec.id)

    def sweep(self, known: set[str]) -> None:
        """Removes the replica jobs of deployments that no longer exist (after a restart)."""
        if self._workloads is None:
            return
        try:
            self._workloads.sweep(known)
        except Unavailable as exc:  # no trainer here: fine unless workloads were deployed
            log.info("did not look for replica jobs of deleted deployments: %s", exc.message)

    def unload(self, spec: DeploymentSpec, replicas: Replicas, grace_s: float = 10.0) -> None:
        """Stops what ``replicas`` runs here (engines, vLLM adapters, clients); a workload's jobs
        belong to the deployment, not to one load of it (see ``release``)."""
        if replicas.embedded is not None:
            replicas.embedded.stop(grace_s)
        try:
            if spec.upstream.kind == "vllm":
                for url in replicas.urls:
                    client = replicas.client(url, spec.upstream.api_key, self.health_timeout_s)
                    for a in spec.adapters:
                        client.unload_adapter(a.name)
        finally:
            replicas.close_clients()


def load_error(exc: BaseException) -> str:
    if isinstance(exc, TunelabError):
        return exc.message
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc}"
    return f"unexpected {type(exc).__name__}: {exc}"
