"""Workload replicas: servers the trainer runs as jobs (WORKLOAD_SERVER), one per replica.

``start`` checks the weights through the datasets service (a base that is no model, an adapter
without adapter_config.json and code the deployment does not trust are refused before any job is
queued), then submits each replica's job, or keeps the one already running when its spec is
unchanged (a gateway restart, an update of other fields). ``follow`` reads the jobs: a replica's
URL is its job's endpoint while the job runs, so a job the trainer restarted is followed to its new
address; a job that ended (the trainer gave up restarting it) fails the deployment with its reason
and message. ``stop`` cancels a deployment's jobs, waits for them to end and deletes them.

The jobs carry labels (servercmd's *_LABEL): the gateway finds them again by deployment, and, after
a restart, cancels those of deployments that no longer exist. On a stack with a token, each
deployment's servers require a key derived from it (``api_key``), which the gateway sends.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field, replace

from tunelab.common.errors import FailedPrecondition, NotFound
from tunelab.gateway.engines import failure_line
from tunelab.gateway.jobs import TERMINAL, TrainerJobs, state_name
from tunelab.gateway.modelcheck import CODE_FILES, adapter_rank, check_is_model, check_remote_code
from tunelab.gateway.models import ModelFetcher
from tunelab.gateway.servercmd import (
    DEPLOYMENT_LABEL,
    OWNER_LABEL,
    SPEC_LABEL,
    ServedFiles,
    job_id,
    job_spec,
    max_lora_rank,
    served_files,
)
from tunelab.gateway.specs import Adapter, DeploymentSpec, ModelSource
from tunelab.trainer.v1 import trainer_pb2 as pb

log = logging.getLogger(__name__)

CANCELLING = pb.Job.STATE_CANCELLING


class WorkloadFailed(FailedPrecondition):
    """A replica's job ended: the trainer will not restart it."""


@dataclass(frozen=True)
class Started:
    spec: DeploymentSpec  # with the dataset versions resolved
    jobs: list[str]  # "jobs/x", one per replica
    files: ServedFiles
    api_key: str = field(default="", repr=False)  # what the replicas' servers require


@dataclass(frozen=True)
class JobView:
    """What a replica's job says now: its endpoint while it runs, else why not."""

    url: str
    note: str
    restarts: int = 0  # attempts after the first: the trainer started the server again
    restart_reason: str = ""  # how the attempt before the current one ended


def first_line(message: str) -> str:
    """A job's message in one line: its first (a trailing "…; last lines of stderr:" header is
    dropped with the lines it announces)."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    if first.endswith(":"):
        first = first.rsplit(";", 1)[0] if ";" in first else first.rstrip(":")
    return first


def source_ref(source: ModelSource, resolved: str = "") -> str:
    where = resolved or source.dataset_version or source.path
    return f"{where}:{source.subpath}" if source.subpath else where


class Workloads:
    def __init__(
        self,
        jobs: TrainerJobs,
        fetcher: ModelFetcher,
        owner: str,
        stop_timeout_s: float = 60.0,
        key_secret: str = "",
    ) -> None:
        """``key_secret``: what each deployment's server key is derived from (the stack's token);
        empty: the servers require no key (a stack without auth)."""
        self.jobs, self.fetcher, self.owner = jobs, fetcher, owner
        self.stop_timeout_s = stop_timeout_s
        self._key_secret = key_secret

    def api_key(self, deployment_id: str) -> str:
        """The key a deployment's servers require (``VLLM_API_KEY`` / ``TUNELAB_ENGINE_API_KEY``).
        Derived, not stored: the same for every gateway of this owner and across restarts, so a
        running replica's spec stays unchanged and it is kept; it reveals nothing of the secret."""
        if not self._key_secret:
            return ""
        message = f"workload-server-key\0{self.owner}\0{deployment_id}".encode()
        return hmac.new(self._key_secret.encode(), message, hashlib.sha256).hexdigest()

    def _labels(self, deployment_id: str = "") -> dict[str, str]:
        return {OWNER_LABEL: self.owner, **({DEPLOYMENT_LABEL: deployment_id} if deployment_id else {})}

    # -- start --------------------------------------------------------------------------------
    def _checked(self, spec: DeploymentSpec) -> tuple[DeploymentSpec, int]:
        """The spec with dataset versions resolved, and the adapters' --max-lora-rank."""
        up = spec.upstream
        version, files = self.fetcher.inspect(spec.base, CODE_FILES)
        if spec.base.dataset_version:  # a path is read where the workload runs, not here
            ref = source_ref(spec.base, version)
            check_remote_code(files, ref, up.trust_remote_code, "upstream.workload.trust_remote_code")
            check_is_model(files, ref)
        adapters, ranks = [], []
        for a in spec.adapters:
            a_version, a_files = self.fetcher.inspect(a.source, ("adapter_config.json",))
            if a.source.dataset_version or a_files:
                ranks.append(adapter_rank(a_files, a.name, source_ref(a.source, a_version)))
            adapters.append(Adapter(a.name, replace(a.source, resolved_version=a_version)))
        spec = spec.with_changes(base=replace(spec.base, resolved_version=version), adapters=tuple(adapters))
        return spec, max_lora_rank(ranks)

    def start(self, spec: DeploymentSpec) -> Started:
        spec, rank = self._checked(spec)
        current = {j.name: j for j in self.jobs.labelled(self._labels(spec.id))}
        names = []
        for index in range(spec.replicas):
            ident = job_id(spec.id, index)
            name = f"jobs/{ident}"
            want = job_spec(spec, index, self.owner, rank, self.api_key(spec.id))
            job = current.pop(name, None) or self.jobs.find(name)
            if job is not None and job.spec.labels.get(OWNER_LABEL) != self.owner:
                raise FailedPrecondition(
                    f"the trainer has a job {ident} that is not a replica of this gateway's deployment "
                    f"{spec.id!r}: remove it (`tunelab job rm --force {ident}`) or deploy under another name"
                )
            live = job is not None and job.state not in (*TERMINAL, CANCELLING)
            if job is not None and live and job.spec.labels.get(SPEC_LABEL) == want.labels[SPEC_LABEL]:
                log.info("deployment %s: keeping its running replica job %s", spec.id, name)
            else:
                if job is not None:
                    self._remove([job])
                self.jobs.create(ident, want)
                log.info("deployment %s: submitted replica job %s", spec.id, name)
            names.append(name)
        stale = list(current.values())  # replicas beyond the new count
        if stale:
            self._remove(stale)
        return Started(spec, names, served_files(spec), self.api_key(spec.id))

    # -- follow -------------------------------------------------------------------------------
    def follow(self, jobs: list[str]) -> list[JobView]:
        """Each job's endpoint (or why it has none); WorkloadFailed when one has ended."""
        views = []
        for index, name in enumerate(jobs):
            job = self.jobs.find(name)
            if job is None:
                raise WorkloadFailed(
                    f"replica {index}: its job {name} no longer exists (deleted outside the gateway); "
                    "update or redeploy the deployment to start it again"
                )
            if job.state in TERMINAL:
                raise WorkloadFailed(self._failure(job, index))
            restarts, why = self._restarts(job)
            if job.state == pb.Job.STATE_RUNNING and job.endpoint:
                views.append(JobView(job.endpoint, "", restarts, why))
                continue
            views.append(JobView("", self._waiting(job), restarts, why))
        return views

    @staticmethod
    def _restarts(job: pb.Job) -> tuple[int, str]:
        """How often the trainer started the job's server again, and how the attempt before the
        current one ended (its first line). The gateway restarts nothing itself: it follows."""
        if job.attempt <= 1:
            return 0, ""
        ended = [a for a in job.attempts if a.attempt < job.attempt]
        last = max(ended, key=lambda a: a.attempt, default=None)
        if last is None:
            return job.attempt - 1, ""
        return job.attempt - 1, ": ".join(p for p in (last.reason, first_line(last.message)) if p)

    @staticmethod
    def _waiting(job: pb.Job) -> str:
        state = state_name(job).lower()
        if job.state == pb.Job.STATE_QUEUED:
            where = f" (position {job.queue_position} in {job.spec.queue})" if job.queue_position else ""
            after = f"; last attempt: {job.reason}: {job.message}" if job.attempt and job.message else ""
            return f"job {job.name} is queued{where}{after}"
        phase = f": {job.phase}" if job.phase else ""
        return f"job {job.name} is {state}{phase}"

    def _failure(self, job: pb.Job, index: int) -> str:
        ident = job.name.removeprefix("jobs/")
        try:
            said = failure_line(self.jobs.log_tail(job.name))
        except Exception:  # noqa: BLE001 - the job's own reason and message still say why
            said = ""
        # One line: the message's first, then the server's own last error.
        first = first_line(job.message)
        detail = f"; the server's last error: {said}" if said and said not in first else ""
        return (
            f"replica {index} (job {ident}) {state_name(job).lower()}: {job.reason or 'ended'}: "
            f"{first}{detail} (`tunelab job logs {ident}` shows its output)"
        )

    # -- stop ---------------------------------------------------------------------------------
    def cancel(self, deployment_id: str) -> None:
        """Cancels the deployment's jobs that still run; their records stay, for `tunelab job logs`."""
        for job in self.jobs.labelled(self._labels(deployment_id)):
            if job.state not in (*TERMINAL, CANCELLING):
                self.jobs.cancel(job.name)

    def stop(self, deployment_id: str) -> None:
        """Cancels the deployment's jobs, waits for them to end, and deletes them."""
        self._remove(self.jobs.labelled(self._labels(deployment_id)))

    def sweep(self, known: set[str]) -> None:
        """Removes the jobs of this gateway's deployments that no longer exist (deleted while the
        trainer could not be reached, or while a load was still submitting)."""
        orphans = [
            j for j in self.jobs.labelled(self._labels()) if j.spec.labels.get(DEPLOYMENT_LABEL) not in known
        ]
        if orphans:
            log.info("removing %d replica jobs of deleted deployments", len(orphans))
            self._remove(orphans)

    def _remove(self, jobs: list[pb.Job]) -> None:
        live = [j.name for j in jobs if j.state not in TERMINAL]
        for name in live:
            try:
                self.jobs.cancel(name)
            except NotFound:  # deleted meanwhile (a delete racing a load of the same deployment)
                pass
        deadline = time.monotonic() + self.stop_timeout_s
        for name in live:
            while time.monotonic() < deadline:
                job = self.jobs.find(name)
                if job is None or job.state in TERMINAL:
                    break
                time.sleep(0.2)
        for job in jobs:
            self.jobs.delete(job.name)  # force: kills what outlived the wait
            log.info("deleted replica job %s", job.name)
