"""What the cluster says of an attempt, as the trainer needs it: pure functions over a Job,
TrainJob or Deployment and its pods (dicts, as the API returns them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

# Pods waiting for one of these will wait forever: the attempt fails (reason on the right).
FATAL_WAITING = {
    "InvalidImageName": "ImageUnavailable",
    "ErrImageNeverPull": "ImageUnavailable",
    "CreateContainerConfigError": "PodConfigError",  # e.g. a Secret or key it names is missing
}


@dataclass(frozen=True)
class ObjectState:
    """A Job's or TrainJob's own status."""

    done: bool = False  # completed (every index succeeded)
    failed: str = ""  # "Reason: message" of its failure
    suspended: bool = False  # not admitted yet (Kueue) or preempted
    deleting: bool = False
    ready: int = 0  # pods (Job) or child Jobs (TrainJob) ready: agents run


@dataclass(frozen=True)
class PodsState:
    running: bool = False  # some pod runs its containers: its agent reports from now on
    waiting: str = ""  # why none runs yet
    fatal_reason: str = ""  # a wait no retry ends (FATAL_WAITING)
    fatal: str = ""
    failed_pod: str = ""  # a pod that failed, the first by index
    failure: str = ""  # how its container ended


def _true_conditions(obj: Obj) -> dict[str, Obj]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return {c.get("type", ""): c for c in conditions if c.get("status") == "True"}


def _why(condition: Obj) -> str:
    return ": ".join(p for p in (condition.get("reason", ""), condition.get("message", "")) if p)


def _common(obj: Obj, done: bool, failed: Obj | None, ready: int) -> ObjectState:
    return ObjectState(
        done=done,
        failed=(_why(failed) or "failed") if failed is not None else "",
        suspended=bool((obj.get("spec") or {}).get("suspend")),
        deleting=bool((obj.get("metadata") or {}).get("deletionTimestamp")),
        ready=ready,
    )


def job_state(job: Obj) -> ObjectState:
    """A batch/v1 Job. FailureTarget and SuccessCriteriaMet come first on recent clusters (while
    the last pods terminate), Failed and Complete once they are gone."""
    cond = _true_conditions(job)
    failed = cond.get("Failed") or cond.get("FailureTarget")
    done = "Complete" in cond or "SuccessCriteriaMet" in cond
    return _common(job, done, failed, int((job.get("status") or {}).get("ready") or 0))


def trainjob_state(trainjob: Obj) -> ObjectState:
    cond = _true_conditions(trainjob)
    jobs = (trainjob.get("status") or {}).get("jobsStatus") or []
    return _common(
        trainjob, "Complete" in cond, cond.get("Failed"), sum(int(j.get("ready") or 0) for j in jobs)
    )


def deployment_state(deployment: Obj) -> ObjectState:
    """A server's apps/v1 Deployment. It never completes, and the pods tell how it fails (see
    :func:`ended_early`); ready counts pods whose readiness probe passed: the server listens."""
    return _common(deployment, False, None, int((deployment.get("status") or {}).get("readyReplicas") or 0))


def _index(pod: Obj) -> tuple[int, str]:
    meta = pod.get("metadata") or {}
    index = (meta.get("annotations") or {}).get("batch.kubernetes.io/job-completion-index", "")
    return (int(index) if index.isdigit() else 1 << 30, meta.get("name", ""))


def _terminated(pod: Obj) -> str:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            what = term.get("reason") or "Error"
            detail = f": {term['message'].strip()}" if term.get("message") else ""
            return f"container {cs.get('name')} terminated: {what} (exit code {term.get('exitCode')}){detail}"
    status = pod.get("status") or {}
    return ": ".join(p for p in (status.get("reason", ""), status.get("message", "")) if p) or "failed"


def _waiting(pod: Obj) -> tuple[str, str]:
    """(reason, message) of why the pod's containers do not run yet."""
    status = pod.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return c.get("reason") or "Unschedulable", c.get("message", "")
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return waiting.get("reason", "Waiting"), waiting.get("message", "")
    return "Pending", ""


def pods_state(pods: list[Obj]) -> PodsState:
    running, waiting, fatal_reason, fatal, failed_pod, failure = False, "", "", "", "", ""
    for pod in sorted(pods, key=_index):
        name = (pod.get("metadata") or {}).get("name", "?")
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if phase == "Running":
            running = True
        elif phase == "Failed" and not failed_pod:
            failed_pod, failure = name, _terminated(pod)
        elif phase == "Pending":
            reason, message = _waiting(pod)
            text = f"pod {name}: {reason}" + (f": {message}" if message else "")
            if reason in FATAL_WAITING and not fatal:
                fatal_reason, fatal = FATAL_WAITING[reason], text
            waiting = waiting or text
    return PodsState(running, waiting, fatal_reason, fatal, failed_pod, failure)


def ended_early(pods: list[Obj]) -> tuple[str, str]:
    """(pod, how) of the first pod of a server's Deployment whose agent ended, or ("", ""). Its
    agent ends only after its attempt has (which deletes the Deployment), so a container that ended
    earlier (killed, out of memory, the trainer unreachable: restarted, or waiting to be) or a
    failed pod (evicted) means the attempt is lost, whatever the Deployment does next."""
    for pod in sorted(pods, key=_index):
        status = pod.get("status") or {}
        statuses = status.get("containerStatuses") or []
        if status.get("phase") == "Failed" or any(
            cs.get("restartCount") or (cs.get("state") or {}).get("terminated") for cs in statuses
        ):
            return (pod.get("metadata") or {}).get("name", "?"), _terminated(pod)
    return "", ""
