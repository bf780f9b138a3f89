"""The Kubernetes executor: per attempt an Indexed Job + headless Service, or a TrainJob, whose
pods run the job agent (a server workload: a Deployment + Service, :mod:`.servers`); their state
read back from the cluster; cancel and kill by deletion.

An attempt is known as ``namespace/name`` (a Job), ``namespace/trainjobs/name`` (a TrainJob) or
``namespace/deployments/name`` (a server's Deployment).
The agent in each pod reports logs, metrics and the exit to the trainer as it does locally; what
the executor adds is what the agent cannot say: that the attempt waits (for Kueue, a node, its
image) and how pods failed before their agent could report (with the last lines of their log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tunelab.common.errors import AlreadyExists, TunelabError
from tunelab.trainer.executor import AttemptStatus, Placement
from tunelab.trainer.gpus import GpuInfo
from tunelab.trainer.kube import manifests as mf
from tunelab.trainer.kube import servers
from tunelab.trainer.kube.api import (
    DEPLOYMENTS,
    JOBS,
    PODS,
    SERVICES,
    TRAINJOBS,
    Kind,
    KubeApi,
    KubeApiError,
    Obj,
)
from tunelab.trainer.kube.errors import typed
from tunelab.trainer.kube.observe import (
    deployment_state,
    ended_early,
    job_state,
    pods_state,
    trainjob_state,
)
from tunelab.trainer.records import is_server
from tunelab.trainer.v1 import trainer_pb2 as pb

log = logging.getLogger(__name__)
LOG_TAIL = 20


class KubernetesExecutor:
    name = "kubernetes"

    def __init__(
        self,
        api: KubeApi,
        cfg: mf.PodConfig,
        spec_of: Callable[[str], pb.JobSpec],
        engine: str = "job",
        gpus: list[GpuInfo] | None = None,
        cpu_millis: int = 0,
        memory_bytes: int = 0,
    ) -> None:
        """``spec_of(job_id)`` is the job's spec (the registry's); ``gpus`` what the trainer hands
        out in the cluster (TUNELAB_GPUS), ``cpu_millis``/``memory_bytes`` what it reports."""
        if engine not in ("job", "trainjob"):
            raise ValueError(f"engine must be job or trainjob, not {engine!r}")
        self.api, self.cfg, self.spec_of, self.engine = api, cfg, spec_of, engine
        self.kind = JOBS if engine == "job" else TRAINJOBS
        self._gpus = list(gpus or [])
        self._cpu, self._memory = cpu_millis, memory_bytes

    def gpus(self) -> list[GpuInfo]:
        return list(self._gpus)

    def cpu_millis(self) -> int:
        return self._cpu

    def memory_bytes(self) -> int:
        return self._memory

    # -- start --------------------------------------------------------------------------------
    def place(
        self, job_id: str, attempt: int, workers: int, gpus: list[str], server_port: int | None = None
    ) -> Placement:
        """One pod per worker, each with ``GPUs / workers`` GPUs and as many processes. Which GPUs
        is the device plugin's business: no CUDA_VISIBLE_DEVICES. A server listens on its port
        (8000 when it leaves it to the executor) behind the attempt's Service."""
        nproc = max(len(gpus) // max(workers, 1), 1)
        env = mf.placement_env(self.engine, job_id, attempt, workers, nproc)
        if server_port is None:
            return Placement(worker_count=workers, node=self.cfg.namespace, env_vars=env)
        port = server_port or servers.DEFAULT_PORT
        return Placement(
            worker_count=1,
            node=self.cfg.namespace,
            env_vars={**env, "PORT": str(port)},
            endpoint=servers.endpoint(self.cfg.namespace, job_id, attempt, port),
        )

    def start(self, job_id: str, attempt: int, placement: Placement) -> str:
        spec, ns, name = self.spec_of(job_id), self.cfg.namespace, mf.object_name(job_id, attempt)
        if is_server(spec):
            return self._start_server(job_id, attempt, spec)
        self._sweep(self.kind, job_id, attempt)
        workers = placement.worker_count
        if self.engine == "trainjob":
            nproc = int(placement.env_vars.get("PET_NPROC_PER_NODE", "1"))
            self._create(TRAINJOBS, mf.trainjob_manifest(self.cfg, job_id, attempt, spec, workers, nproc))
            log.info("created TrainJob", extra={"job": job_id, "attempt": attempt, "ref": f"{ns}/{name}"})
            return f"{ns}/{TRAINJOBS.plural}/{name}"
        job = self._create(JOBS, mf.job_manifest(self.cfg, job_id, attempt, spec, workers))
        if workers > 1:
            try:
                self._create(SERVICES, mf.service_manifest(self.cfg, job_id, attempt, owner=job))
            except TunelabError:
                self._delete(JOBS, ns, name, "Background", quiet=True)
                raise
        log.info("created Job", extra={"job": job_id, "attempt": attempt, "ref": f"{ns}/{name}"})
        return f"{ns}/{name}"

    def _start_server(self, job_id: str, attempt: int, spec: pb.JobSpec) -> str:
        ns, name = self.cfg.namespace, mf.object_name(job_id, attempt)
        self._sweep(DEPLOYMENTS, job_id, attempt)
        deployment = self._create(DEPLOYMENTS, servers.deployment_manifest(self.cfg, job_id, attempt, spec))
        try:
            self._create(SERVICES, servers.service_manifest(self.cfg, job_id, attempt, spec, deployment))
        except TunelabError:
            self._delete(DEPLOYMENTS, ns, name, "Background", quiet=True)
            raise
        log.info("created Deployment", extra={"job": job_id, "attempt": attempt, "ref": f"{ns}/{name}"})
        return f"{ns}/{DEPLOYMENTS.plural}/{name}"

    def _create(self, kind: Kind, body: Obj) -> Obj:
        ns = self.cfg.namespace
        try:
            return self.api.create(kind, ns, body)
        except KubeApiError as exc:
            if exc.status != 409:
                raise typed(exc, "create", kind, ns, body["metadata"]["name"]) from None
        return self._adopt(kind, body)

    def _adopt(self, kind: Kind, body: Obj) -> Obj:
        """The object exists: left by an earlier try of this very attempt (a trainer restart), it
        is taken over; anything else is in the way."""
        ns, name, want = self.cfg.namespace, body["metadata"]["name"], body["metadata"]["labels"]
        try:
            found = self.api.get(kind, ns, name)
        except KubeApiError as exc:
            raise typed(exc, "get", kind, ns, name) from None
        have = (found.get("metadata") or {}).get("labels") or {}
        if all(have.get(k) == want[k] for k in (mf.LABEL_JOB, mf.LABEL_ATTEMPT)):
            log.info("adopted the existing %s %s/%s", kind.kind, ns, name)
            return found
        raise AlreadyExists(
            f"a {kind.kind} {ns}/{name} exists that this trainer did not create for attempt "
            f"{want[mf.LABEL_ATTEMPT]} of jobs/{want[mf.LABEL_JOB]}: delete it "
            f"(kubectl -n {ns} delete {kind.resource} {name}) and the job is retried"
        )

    def _sweep(self, kind: Kind, job_id: str, attempt: int) -> None:
        """Deletes what is left of the job's earlier attempts that still holds resources, e.g. a
        Job Kueue suspended (preempted) after its agent had reported."""
        ns = self.cfg.namespace
        try:
            found = self.api.list(kind, ns, mf.selector(job_id))
        except KubeApiError as exc:
            log.warning(
                "cannot list earlier attempts of %s: %s", job_id, typed(exc, "list", kind, ns).message
            )
            return
        state = {JOBS: job_state, TRAINJOBS: trainjob_state, DEPLOYMENTS: deployment_state}[kind]
        for obj in found:
            meta = obj.get("metadata") or {}
            st = state(obj)
            if (meta.get("labels") or {}).get(mf.LABEL_ATTEMPT) != str(attempt) and not (
                st.done or st.failed
            ):
                self._delete(kind, ns, meta.get("name", ""), "Background", quiet=True)

    # -- state --------------------------------------------------------------------------------
    def _parse(self, ref: str) -> tuple[Kind, str, str]:
        parts = ref.split("/")
        if len(parts) == 3 and parts[1] in (TRAINJOBS.plural, DEPLOYMENTS.plural):
            return (TRAINJOBS if parts[1] == TRAINJOBS.plural else DEPLOYMENTS), parts[0], parts[2]
        if len(parts) != 2:
            raise ValueError(f"not a Kubernetes executor reference: {ref!r}")
        return JOBS, parts[0], parts[1]

    def alive(self, ref: str) -> bool:
        return self.status(ref).alive

    def status(self, ref: str) -> AttemptStatus:
        kind, ns, name = self._parse(ref)
        where = f"the Kubernetes {kind.kind} {ns}/{name}"
        try:
            obj = self.api.get(kind, ns, name)
        except KubeApiError as exc:
            if exc.status == 404:
                return AttemptStatus(
                    False, reason="Lost", message=f"{where} is gone (deleted outside the trainer?)"
                )
            log.warning("cannot read %s: %s", where, typed(exc, "get", kind, ns, name).message)
            return AttemptStatus(True)  # cannot tell; the agent's heartbeat still counts
        if kind == DEPLOYMENTS:
            return self._server_status(obj, ns, name, where)
        st = job_state(obj) if kind == JOBS else trainjob_state(obj)
        if st.failed:
            return AttemptStatus(
                False, reason="PodFailed", message=self._failure(kind, ns, name, where, st.failed)
            )
        if st.done:
            return AttemptStatus(
                False,
                reason="Lost",
                message=f"{where} completed, but its agent did not report how the command ended",
            )
        if st.deleting:
            return AttemptStatus(True, pending=f"{where} is being deleted")
        if st.suspended:
            queue = ((obj.get("metadata") or {}).get("labels") or {}).get(mf.KUEUE_QUEUE)
            why = f"waiting for Kueue to admit it from LocalQueue {queue}" if queue else "suspended"
            return AttemptStatus(True, pending=f"queued in Kubernetes: {why}")
        if st.ready > 0:
            return AttemptStatus(True)
        pods = self._pods(kind, ns, name)
        if pods is None:
            return AttemptStatus(True)
        ps = pods_state(pods)
        if ps.running:
            return AttemptStatus(True)
        if ps.fatal:
            return AttemptStatus(False, reason=ps.fatal_reason, message=f"{where} cannot start: {ps.fatal}")
        waiting = ps.waiting or "waiting for its pods to be created"
        if ps.failed_pod:
            waiting = f"pod {ps.failed_pod} failed ({ps.failure}), retrying; {waiting}"
        return AttemptStatus(True, pending=f"starting in Kubernetes: {waiting}")

    def _server_status(self, obj: Obj, ns: str, name: str, where: str) -> AttemptStatus:
        """A server's Deployment: alive while its pod runs the agent; lost once that ended early."""
        st = deployment_state(obj)
        if st.deleting:
            return AttemptStatus(True, pending=f"{where} is being deleted")
        if st.ready > 0:
            return AttemptStatus(True)
        pods = self._pods(DEPLOYMENTS, ns, name)
        if pods is None:
            return AttemptStatus(True)
        pod, how = ended_early(pods)
        if pod:
            message = f"{where}: the agent in pod {pod} ended before the server did ({how})"
            return AttemptStatus(
                False, reason="PodFailed", message=self._log_tail(message, ns, pod, mf.AGENT)
            )
        ps = pods_state(pods)
        if ps.fatal:
            return AttemptStatus(False, reason=ps.fatal_reason, message=f"{where} cannot start: {ps.fatal}")
        if ps.running:
            return AttemptStatus(True)
        if "SchedulingGated" in ps.waiting and self.cfg.kueue:
            return AttemptStatus(True, pending="queued in Kubernetes: waiting for Kueue to admit its pod")
        waiting = ps.waiting or "waiting for its pod to be created"
        return AttemptStatus(True, pending=f"starting in Kubernetes: {waiting}")

    def _pod_selector(self, kind: Kind, name: str) -> str:
        if kind == DEPLOYMENTS:
            return servers.pod_selector(name)
        return (
            f"jobset.sigs.k8s.io/jobset-name={name}"
            if kind == TRAINJOBS
            else f"batch.kubernetes.io/job-name={name}"
        )

    def _pods(self, kind: Kind, ns: str, name: str) -> list[Obj] | None:
        try:
            return self.api.list(PODS, ns, self._pod_selector(kind, name))
        except KubeApiError as exc:
            log.warning("cannot list the pods of %s/%s: %s", ns, name, typed(exc, "list", PODS, ns).message)
            return None

    def _failure(self, kind: Kind, ns: str, name: str, where: str, why: str) -> str:
        """How the object failed, with its first failed pod and that pod's last log lines (the
        agent's own, when it failed before it could report)."""
        message = f"{where} failed ({why})"
        ps = pods_state(self._pods(kind, ns, name) or [])
        if not ps.failed_pod:
            return message
        message += f"; pod {ps.failed_pod}: {ps.failure}"
        container = mf.AGENT if kind == JOBS else mf.TRAINJOB_CONTAINER
        return self._log_tail(message, ns, ps.failed_pod, container)

    def _log_tail(self, message: str, ns: str, pod: str, container: str) -> str:
        """``message`` with the last lines of the container's log (the agent's own, when it failed
        before it could report)."""
        try:
            tail = self.api.log(ns, pod, container, LOG_TAIL).rstrip()
        except KubeApiError as exc:
            log.warning("cannot read the log of pod %s/%s: %s", ns, pod, exc)
            return message
        return f"{message}; last lines of its log:\n{tail}" if tail else message

    # -- stop ---------------------------------------------------------------------------------
    def stop(self, ref: str) -> None:
        """Deletes the attempt's object, its pods first (Foreground): each agent gets SIGTERM and
        the pod's grace period to stop the command and commit outputs."""
        kind, ns, name = self._parse(ref)
        self._delete(kind, ns, name, "Foreground")

    def kill(self, ref: str) -> None:
        """Deletes the attempt's object and its pods at once (no grace period); a server's
        Service too (its owner, the Deployment, would have it collected, but not at once)."""
        kind, ns, name = self._parse(ref)
        self._delete(kind, ns, name, "Background", quiet=True)
        if kind == DEPLOYMENTS:
            self._delete(SERVICES, ns, name, "Background", quiet=True)
        for pod in self._pods(kind, ns, name) or []:
            self._delete(PODS, ns, pod["metadata"]["name"], "Background", grace_s=0, quiet=True)

    def _delete(
        self,
        kind: Kind,
        ns: str,
        name: str,
        propagation: str,
        grace_s: int | None = None,
        quiet: bool = False,
    ) -> None:
        try:
            self.api.delete(kind, ns, name, propagation, grace_s)
        except KubeApiError as exc:
            if exc.status == 404:
                return  # gone already
            err = typed(exc, "delete", kind, ns, name)
            if not quiet:
                raise err from None
            log.warning("cannot delete %s %s/%s: %s", kind.kind, ns, name, err.message)
