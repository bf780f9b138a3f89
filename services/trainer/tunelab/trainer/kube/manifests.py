"""The Kubernetes objects of one attempt, built from the job's spec: pure functions, dicts out.

Engine ``job``: an Indexed Job (completions = parallelism = workers) whose pod *i* runs
``tunelab agent --job jobs/ID --attempt N --worker i``, plus, for several workers, a headless
Service named like the Job, so that pod 0 answers as ``<job>-0.<job>`` for torchrun's rendezvous.
Engine ``trainjob``: a Kubeflow Trainer v2 TrainJob on a ClusterTrainingRuntime (torch-distributed),
which renders a JobSet whose pods run the same agent.

torchrun takes its arguments from ``PET_<ARG>`` variables: the attempt's PET_NNODES (= workers),
PET_NPROC_PER_NODE, PET_MASTER_ADDR and PET_MASTER_PORT reach the command through the agent's
assignment (:func:`placement_env`, as with the local executor); PET_NODE_RANK is each pod's
completion index (the Job's ``batch.kubernetes.io/job-completion-index``; TrainJob sets its own).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tunelab.trainer.quantities import cpu_quantity
from tunelab.trainer.v1 import trainer_pb2 as pb

Manifest = dict[str, Any]

GPU = "nvidia.com/gpu"
AGENT = "agent"  # the container of Job pods
TRAINJOB_CONTAINER = "node"  # the container (and replicated job) of the torch runtimes
TRAINJOB_GROUP, TRAINJOB_VERSION, TRAINJOB_PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
MASTER_PORT = 29500
CACHE_DIR = "/var/cache/tunelab"
ATTEMPT_DIR = "/var/lib/tunelab/attempt"  # the agent's scratch area; the working dir is its tree/
COMMIT_MARGIN_S = 60  # after the cancel grace period: time for the agent to commit outputs
USAGE_ERROR = 2  # the agent's exit status for arguments it does not understand: a config error
LABEL_JOB, LABEL_ATTEMPT = "tunelab.dev/job", "tunelab.dev/attempt"
KUEUE_QUEUE, KUEUE_PRIORITY = "kueue.x-k8s.io/queue-name", "kueue.x-k8s.io/priority-class"
NAME_MAX = 40  # pod hostnames add "-<index>" (Job) or "-node-0-<index>" (TrainJob) within 63
_RESERVED = ("kubernetes.io/", "k8s.io/", "kueue.x-k8s.io/", "tunelab.dev/")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class PodConfig:
    """What every job pod gets from the trainer's settings."""

    namespace: str
    image: str  # a job's own --image wins
    agent_argv: tuple[str, ...] = ("tunelab", "agent")
    # What the local executor tells its agents (TUNELAB_*_ADDR, TUNELAB_TOKEN, TUNELAB_CACHE_DIR);
    # the cache is a volume here and the token comes from token_secret when that is set.
    agent_env: Mapping[str, str] = field(default_factory=dict)
    token_secret: tuple[str, str] | None = None  # (Secret name, key)
    service_account: str = ""
    image_pull_secrets: tuple[str, ...] = ()
    cache_pvc: str = ""
    run_as: int = 10001
    kueue: bool = True
    ttl_after_finished_s: int = 86400
    trainjob_runtime: str = "torch-distributed"
    cancel_grace_s: float = 30.0


def object_name(job_id: str, attempt: int) -> str:
    """``tl-<job>-<attempt>``: a DNS label that starts with a letter (Services and TrainJobs need
    one), short enough for the pods' hostnames; long job ids are cut and keep a hash."""
    name = f"tl-{job_id}-{attempt}"
    if len(name) <= NAME_MAX:
        return name
    tail = f"-{hashlib.sha256(job_id.encode()).hexdigest()[:6]}-{attempt}"
    return f"tl-{job_id[: NAME_MAX - 3 - len(tail)].rstrip('-')}{tail}"


def labels(job_id: str, attempt: int) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tunelab-job",
        "app.kubernetes.io/part-of": "tunelab",
        "app.kubernetes.io/managed-by": "tunelab-trainer",
        LABEL_JOB: job_id,
        LABEL_ATTEMPT: str(attempt),
    }


def selector(job_id: str) -> str:
    """Label selector of the objects of every attempt of a job."""
    return f"{LABEL_JOB}={job_id}"


def placement_env(engine: str, job_id: str, attempt: int, workers: int, nproc: int) -> dict[str, str]:
    """What the trainer tells the command of every worker (through the agent's assignment)."""
    name = object_name(job_id, attempt)
    pod0 = f"{name}-0.{name}" if engine == "job" else f"{name}-{TRAINJOB_CONTAINER}-0-0.{name}"
    return {
        "TUNELAB_JOB": f"jobs/{job_id}",
        "TUNELAB_ATTEMPT": str(attempt),
        "PET_NNODES": str(workers),
        "PET_NPROC_PER_NODE": str(nproc),
        "PET_MASTER_ADDR": pod0 if workers > 1 else "127.0.0.1",
        "PET_MASTER_PORT": str(MASTER_PORT),
    }


# -- pieces of the pod --------------------------------------------------------------------------
def _valid_label(key: str, value: str | None = None) -> bool:
    prefix, _, name = key.rpartition("/")
    ok = bool(name) and bool(_LABEL_NAME.match(name)) and (not prefix or bool(_DNS_SUBDOMAIN.match(prefix)))
    ok = ok and not any(key.startswith(r) or f".{r}" in key for r in _RESERVED)
    return ok and (value is None or (len(value) <= 63 and bool(_LABEL_NAME.match(value))))


def _metadata(cfg: PodConfig, spec: pb.JobSpec, job_id: str, attempt: int) -> Manifest:
    """The job's own labels and annotations where Kubernetes accepts them, then ours (and Kueue's)."""
    lab = {k: v for k, v in spec.labels.items() if _valid_label(k, v)} | labels(job_id, attempt)
    if cfg.kueue:
        lab[KUEUE_QUEUE] = spec.queue.removeprefix("queues/") or "default"
        if spec.priority_class:
            lab[KUEUE_PRIORITY] = spec.priority_class
    notes = {k: v for k, v in spec.annotations.items() if _valid_label(k)}
    notes["tunelab.dev/job-name"] = f"jobs/{job_id}"
    return {
        "name": object_name(job_id, attempt),
        "namespace": cfg.namespace,
        "labels": lab,
        "annotations": notes,
    }


def _quantities(res: pb.Resources) -> dict[str, str]:
    out: dict[str, str] = {}
    if res.cpu_millis:
        out["cpu"] = cpu_quantity(res.cpu_millis)
    if res.memory_bytes:
        out["memory"] = str(res.memory_bytes)
    if res.gpu_count:
        out[GPU] = str(res.gpu_count)
    out.update(res.other)
    return out


def resources(spec: pb.JobSpec) -> Manifest:
    """Per worker: limits from ``resources``, requests from ``requests`` (else the limits); GPUs
    (``nvidia.com/gpu``) are requested exactly as limited, as Kubernetes requires."""
    limits = _quantities(spec.resources)
    requests = _quantities(spec.requests) if spec.HasField("requests") else dict(limits)
    if GPU in limits:
        requests[GPU] = limits[GPU]
    return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}


def agent_env(cfg: PodConfig) -> list[Manifest]:
    """The agent's variables, as the local executor sets them (the cache is a volume here)."""
    skip = ("TUNELAB_CACHE_DIR", "TUNELAB_TOKEN", "TUNELAB_AGENT_FILESYSTEM", "TUNELAB_AGENT_SCRATCH")
    env: list[Manifest] = [{"name": k, "value": v} for k, v in sorted(cfg.agent_env.items()) if k not in skip]
    env.append({"name": "TUNELAB_CACHE_DIR", "value": CACHE_DIR})
    # The pod mounts the working directory (see volumes): the agent stages it in place.
    env.append({"name": "TUNELAB_AGENT_FILESYSTEM", "value": "pod"})
    env.append({"name": "TUNELAB_AGENT_SCRATCH", "value": ATTEMPT_DIR})
    if cfg.token_secret is not None:
        ref = {"name": cfg.token_secret[0], "key": cfg.token_secret[1]}
        env.append({"name": "TUNELAB_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    elif cfg.agent_env.get("TUNELAB_TOKEN"):
        env.append({"name": "TUNELAB_TOKEN", "value": cfg.agent_env["TUNELAB_TOKEN"]})
    env += [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
    return env


def agent_args(job_id: str, attempt: int) -> list[str]:
    # $(JOB_COMPLETION_INDEX): set in every pod of an Indexed Job (a TrainJob's JobSet makes those too)
    return ["--job", f"jobs/{job_id}", "--attempt", str(attempt), "--worker", "$(JOB_COMPLETION_INDEX)"]


def volumes(cfg: PodConfig, spec: pb.JobSpec) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, mounts): the root filesystem is read-only, so /tmp (also HOME), the attempt's
    scratch area and the cache are volumes; /dev/shm is memory (NCCL and DataLoader workers use it).

    The working directory is the scratch area's ``tree`` (a subPath of the same volume): the agent
    materializes the job's mounts there, nested as the job asks, and keeps its markers and output
    snapshots beside it, out of the job's sight and on the same filesystem (snapshots are hard
    links). A working directory at /tmp or /dev/shm takes that volume's place."""
    shm: Manifest = {"medium": "Memory"}
    if spec.shm_size_bytes > 0:
        shm["sizeLimit"] = str(spec.shm_size_bytes)
    cache: Manifest = (
        {"persistentVolumeClaim": {"claimName": cfg.cache_pvc}} if cfg.cache_pvc else {"emptyDir": {}}
    )
    vols = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": shm},
        {"name": "cache", **cache},
        {"name": "attempt", "emptyDir": {}},
    ]
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "attempt", "mountPath": ATTEMPT_DIR},
    ]
    work = posixpath.normpath(spec.working_dir or "/")
    if work not in ("/", CACHE_DIR, ATTEMPT_DIR):  # else the agent runs in the tree, and says so
        replaced = {m["name"] for m in mounts if m["mountPath"] == work}
        vols = [v for v in vols if v["name"] not in replaced]
        mounts = [m for m in mounts if m["name"] not in replaced]
        mounts.append({"name": "attempt", "mountPath": work, "subPath": "tree"})
    return vols, mounts


def pod_security(cfg: PodConfig) -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": cfg.run_as,
        "runAsGroup": cfg.run_as,
        "fsGroup": cfg.run_as,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# GPUs come through the device plugin: the agent needs no privilege, capability or host path.
CONTAINER_SECURITY: Manifest = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}


def _scheduling(cfg: PodConfig, spec: pb.JobSpec) -> Manifest:
    out: Manifest = {}
    if cfg.service_account:
        out["serviceAccountName"] = cfg.service_account
    if cfg.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": s} for s in cfg.image_pull_secrets]
    if spec.resources.gpu_count:  # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule
        out["tolerations"] = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    return out


def failure_handling(spec: pb.JobSpec) -> Manifest:
    """The restart policy as the Job's backoffLimit and podFailurePolicy.

    The agent exits 0 once it has reported how the command ended, failures included: the trainer
    retries those as new attempts. A pod fails only when the agent could not report (the trainer
    unreachable at start, the agent killed), which a new pod may fix: up to ``backoff_limit``
    times, none for NEVER. A usage error (an agent that does not understand the trainer's
    arguments: the job image is too old) fails the Job at once; evictions and preemptions
    (DisruptionTarget) do not count."""
    never = spec.restart_policy == pb.RESTART_POLICY_NEVER
    return {
        "backoffLimit": 0 if never else spec.backoff_limit,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": AGENT, "operator": "In", "values": [USAGE_ERROR]},
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
    }


def _grace_s(cfg: PodConfig, spec: pb.JobSpec) -> int:
    grace = cfg.cancel_grace_s
    if spec.HasField("cancel_grace_period"):
        grace = spec.cancel_grace_period.ToTimedelta().total_seconds()
    return int(grace) + COMMIT_MARGIN_S


# -- the objects --------------------------------------------------------------------------------
def job_manifest(cfg: PodConfig, job_id: str, attempt: int, spec: pb.JobSpec, workers: int) -> Manifest:
    name = object_name(job_id, attempt)
    vols, mounts = volumes(cfg, spec)
    rank = {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    container: Manifest = {
        "name": AGENT,
        "image": spec.image or cfg.image,
        "command": list(cfg.agent_argv),
        "args": agent_args(job_id, attempt),
        "env": [*agent_env(cfg), {"name": "PET_NODE_RANK", "valueFrom": rank}],
        "resources": resources(spec),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": mounts,
    }
    pod: Manifest = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": _grace_s(cfg, spec),
        "automountServiceAccountToken": False,  # the agent talks to the trainer, not to Kubernetes
        "enableServiceLinks": False,
        "securityContext": pod_security(cfg),
        **_scheduling(cfg, spec),
        "containers": [container],
        "volumes": vols,
    }
    if workers > 1:
        container["ports"] = [{"name": "c10d", "containerPort": MASTER_PORT}]
        pod["subdomain"] = name  # with the headless Service of that name: <name>-<i>.<name>
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(cfg, spec, job_id, attempt),
        "spec": {
            "completionMode": "Indexed",
            "completions": workers,
            "parallelism": workers,
            **failure_handling(spec),
            "ttlSecondsAfterFinished": cfg.ttl_after_finished_s,
            "suspend": cfg.kueue,  # Kueue admits (unsuspends) it when its queue has the quota
            "template": {"metadata": {"labels": labels(job_id, attempt)}, "spec": pod},
        },
    }


def service_manifest(cfg: PodConfig, job_id: str, attempt: int, owner: Manifest | None = None) -> Manifest:
    """The headless Service that names the Job's pods; ``owner`` (the created Job) deletes it."""
    meta: Manifest = {
        "name": object_name(job_id, attempt),
        "namespace": cfg.namespace,
        "labels": labels(job_id, attempt),
    }
    if owner is not None:
        ref = {"apiVersion": "batch/v1", "kind": "Job"}
        meta["ownerReferences"] = [
            {**ref, "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}
        ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_JOB: job_id, LABEL_ATTEMPT: str(attempt)},
            "ports": [{"name": "c10d", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
            "publishNotReadyAddresses": True,  # pod 0 resolves before it is ready
        },
    }


def trainjob_manifest(
    cfg: PodConfig, job_id: str, attempt: int, spec: pb.JobSpec, workers: int, nproc: int
) -> Manifest:
    """A TrainJob on ``cfg.trainjob_runtime``. The runtime's JobSet decides pod restarts and the
    termination grace period (not patchable); the pod's identity, volumes and security come
    through a runtime patch."""
    vols, mounts = volumes(cfg, spec)
    trainer: Manifest = {
        "image": spec.image or cfg.image,
        "command": list(cfg.agent_argv),
        "args": agent_args(job_id, attempt),
        "env": agent_env(cfg),
        "numNodes": workers,
        "numProcPerNode": nproc,
    }
    if res := resources(spec):
        trainer["resourcesPerNode"] = res
    pod = {
        "securityContext": pod_security(cfg),
        **_scheduling(cfg, spec),
        "volumes": vols,
        "containers": [
            {"name": TRAINJOB_CONTAINER, "volumeMounts": mounts, "securityContext": CONTAINER_SECURITY}
        ],
    }
    template = {"metadata": {"labels": labels(job_id, attempt)}, "spec": pod}
    patch = {"replicatedJobs": [{"name": TRAINJOB_CONTAINER, "template": {"spec": {"template": template}}}]}
    return {
        "apiVersion": f"{TRAINJOB_GROUP}/{TRAINJOB_VERSION}",
        "kind": "TrainJob",
        "metadata": _metadata(cfg, spec, job_id, attempt),
        "spec": {
            "runtimeRef": {
                "apiGroup": TRAINJOB_GROUP,
                "kind": "ClusterTrainingRuntime",
                "name": cfg.trainjob_runtime,
            },
            "suspend": cfg.kueue,
            "trainer": trainer,
            "runtimePatches": [
                {"manager": "tunelab.dev/trainer", "trainingRuntimeSpec": {"template": {"spec": patch}}}
            ],
        },
    }
