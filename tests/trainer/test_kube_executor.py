"""The Kubernetes executor (TUNELAB_EXECUTOR=kubernetes).

No Kubernetes cluster can run on the machines these tests run on (no container runtime for kind
or k3s), so three things stand in for one, each as close to the real thing as this allows:

- the manifests are checked by the validators the deploy files use: ``kubernetes-validate
  --strict`` (the API's own OpenAPI schemas) for Job and Service, and ``k8s/validate_crds.py``
  (the TrainJob schema vendored in ``k8s/schemas/``) for the TrainJob;
- the executor's logic runs against :class:`kubehelpers.RecordingKubeApi`, a recording stand-in
  for the API server (acceptable only because no cluster can run here), and the real
  ``kubernetes`` client against a local HTTP server that records the requests it gets;
- the whole trainer runs with that stand-in: jobs submitted over gRPC become Jobs, Kueue's
  suspension keeps them pending past the heartbeat timeout, and the generated pod's container
  (command, args, environment) is started here as a process: the real job agent, which runs the
  command and reports to the trainer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from jobhelpers import (
    CANCELLED,
    FAILED,
    STARTING,
    SUCCEEDED,
    free_port,
    log_text,
    py,
    spec,
    wait_for,
    wait_until,
)
from kubehelpers import RecordingKubeApi, run_container
from tunelab.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, PermissionDenied
from tunelab.trainer.kube import manifests as mf
from tunelab.trainer.kube.api import JOBS, PODS, SERVICES, TRAINJOBS, KubeApiError
from tunelab.trainer.kube.executor import KubernetesExecutor
from tunelab.trainer.v1 import trainer_pb2 as pb

REPO = Path(__file__).resolve().parents[2]
NS = "ml"
TOKEN = "s3cret"
SECRET = ("tunelab-secrets", "auth-token")
CFG = mf.PodConfig(
    namespace=NS,
    image="ghcr.io/tunelab/job:0.1.0",
    agent_env={
        "TUNELAB_DATASETS_ADDR": "datasets:50051",
        "TUNELAB_ENVIRONMENTS_ADDR": "environments:50052",
        "TUNELAB_TRAINER_ADDR": "trainer:50053",
        "TUNELAB_CACHE_DIR": "/var/lib/tunelab/cache",
        "TUNELAB_TOKEN": TOKEN,
    },
    token_secret=SECRET,
    service_account="tunelab-job",
    image_pull_secrets=("regcred",),
    cache_pvc="tunelab-cache",
)
GIB = 1 << 30


def seed_spec(**fields: Any) -> pb.JobSpec:
    """The seed's `baizectl job submit` as the trainer stores it (normalized)."""
    values: dict[str, Any] = {
        "command": [
            "python",
            "finetune_hf.py",
            "data/AdvertiseGen_fix",
            "./chatglm3-6b",
            "configs/lora.yaml",
        ],
        "type": pb.JOB_TYPE_PYTORCH,
        "queue": "queues/default",
        "priority_class": "high",
        "priority": 100000,
        "resources": pb.Resources(cpu_millis=8000, memory_bytes=16 * GIB, gpu_count=1),
        "working_dir": "/home/user/ChatGLM3/finetune_demo",
        "restart_policy": pb.RESTART_POLICY_ON_FAILURE,
        "backoff_limit": 3,
    }
    values.update(fields)
    return pb.JobSpec(**values)


def validate(tmp_path: Path, docs: list[dict[str, Any]], *command: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"manifests-{len(list(tmp_path.glob('manifests-*')))}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    argv = [*command, "-k", "1.30.0", "-k", "1.37.0", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


KUBERNETES_VALIDATE = (str(Path(sys.executable).parent / "kubernetes-validate"), "--strict")
VALIDATE_CRDS = (sys.executable, str(REPO / "k8s" / "validate_crds.py"))


def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]  # type: ignore[no-any-return]


# -- manifests ----------------------------------------------------------------------------------
def test_job_and_service_pass_kubernetes_validate(tmp_path: Path) -> None:
    two = seed_spec(
        workers=2, requests=pb.Resources(cpu_millis=4500, memory_bytes=8 * GIB), shm_size_bytes=GIB
    )
    never = seed_spec(restart_policy=pb.RESTART_POLICY_NEVER, resources=pb.Resources(), working_dir="/tmp/w")
    job = mf.job_manifest(CFG, "finetune-chatglm3-x7k2p", 1, two, 2)
    owner = {"metadata": {"name": job["metadata"]["name"], "uid": "6f1c"}}
    plain = mf.job_manifest(mf.PodConfig(namespace=NS, image="job:1", kueue=False), "cpu-only", 3, never, 1)
    docs = [job, mf.service_manifest(CFG, "finetune-chatglm3-x7k2p", 1, owner), plain]
    result = validate(tmp_path, docs, *KUBERNETES_VALIDATE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 6  # three objects, two Kubernetes versions

    # the Indexed Job + headless Service of the issue
    name = "tl-finetune-chatglm3-x7k2p-1"
    assert job["metadata"]["name"] == name and job["metadata"]["namespace"] == NS
    assert job["metadata"]["labels"][mf.KUEUE_QUEUE] == "default"
    assert job["metadata"]["labels"][mf.KUEUE_PRIORITY] == "high"
    s = job["spec"]
    assert (s["completionMode"], s["completions"], s["parallelism"], s["suspend"]) == ("Indexed", 2, 2, True)
    assert s["backoffLimit"] == 3
    fail_job = s["podFailurePolicy"]["rules"][0]
    assert fail_job["action"] == "FailJob" and fail_job["onExitCodes"]["values"] == [mf.USAGE_ERROR]
    pod = pod_of(job)
    assert pod["subdomain"] == name and pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "tunelab-job" and pod["automountServiceAccountToken"] is False
    assert (
        pod["securityContext"]["runAsNonRoot"]
        and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    (c,) = pod["containers"]
    assert c["command"] == ["tunelab", "agent"]
    assert c["args"] == [
        "--job",
        "jobs/finetune-chatglm3-x7k2p",
        "--attempt",
        "1",
        "--worker",
        "$(JOB_COMPLETION_INDEX)",
    ]
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    assert c["resources"] == {
        "limits": {"cpu": "8", "memory": str(16 * GIB), "nvidia.com/gpu": "1"},
        "requests": {"cpu": "4500m", "memory": str(8 * GIB), "nvidia.com/gpu": "1"},
    }
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["TUNELAB_TOKEN"] == {"secretKeyRef": {"name": SECRET[0], "key": SECRET[1]}}
    assert env["TUNELAB_CACHE_DIR"] == mf.CACHE_DIR and env["TUNELAB_TRAINER_ADDR"] == "trainer:50053"
    assert "job-completion-index" in env["PET_NODE_RANK"]["fieldRef"]["fieldPath"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": str(GIB)}
    assert volumes[mounts[mf.CACHE_DIR]]["persistentVolumeClaim"]["claimName"] == "tunelab-cache"
    assert "emptyDir" in volumes[mounts["/home/user/ChatGLM3/finetune_demo"]]
    service = docs[1]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["metadata"]["ownerReferences"][0]["uid"] == "6f1c"
    selector = service["spec"]["selector"]
    assert selector == {mf.LABEL_JOB: "finetune-chatglm3-x7k2p", mf.LABEL_ATTEMPT: "1"}
    assert selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    # restart policy NEVER, no Kueue, no resources, a working dir under /tmp (already a volume)
    assert plain["spec"]["backoffLimit"] == 0 and plain["spec"]["suspend"] is False
    assert not any(k.startswith("kueue.x-k8s.io/") for k in plain["metadata"]["labels"])
    assert (
        "resources" not in pod_of(plain)["containers"][0] or not pod_of(plain)["containers"][0]["resources"]
    )
    assert [m["mountPath"] for m in pod_of(plain)["containers"][0]["volumeMounts"]].count("/tmp") == 1


def test_validation_catches_a_broken_job(tmp_path: Path) -> None:
    """The check above can fail: a misspelt field is refused."""
    job = mf.job_manifest(CFG, "broken", 1, seed_spec(), 1)
    pod_of(job)["containers"][0]["securityContxt"] = pod_of(job)["containers"][0].pop("securityContext")
    result = validate(tmp_path, [job], *KUBERNETES_VALIDATE)
    assert result.returncode != 0 and "securityContxt" in result.stdout + result.stderr


def test_trainjob_against_the_vendored_schema(tmp_path: Path) -> None:
    if not (REPO / "k8s" / "validate_crds.py").is_file():
        pytest.skip("k8s/validate_crds.py and k8s/schemas/ (the TrainJob schema) are not in this checkout")
    tj = mf.trainjob_manifest(CFG, "finetune-chatglm3-x7k2p", 2, seed_spec(workers=2), 2, 1)
    result = validate(tmp_path, [tj], *VALIDATE_CRDS)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = json.loads(json.dumps(tj))
    broken["spec"]["trainer"]["numNodes"] = 0
    assert validate(tmp_path, [broken], *VALIDATE_CRDS).returncode != 0

    assert (tj["apiVersion"], tj["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert tj["metadata"]["labels"][mf.KUEUE_QUEUE] == "default" and tj["spec"]["suspend"] is True
    assert tj["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }
    trainer = tj["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 1)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    assert not any(e["name"].startswith("PET_") for e in trainer["env"])  # the runtime's own (reserved)
    (patch,) = tj["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = rjob["template"]["spec"]["template"]["spec"]
    assert rjob["name"] == pod["containers"][0]["name"] == "node"
    assert pod["serviceAccountName"] == "tunelab-job" and pod["securityContext"]["runAsNonRoot"]


def test_names_and_placement() -> None:
    assert mf.object_name("a" * 63, 12) == mf.object_name("a" * 63, 12)
    long = mf.object_name("a" * 63, 12)
    assert len(long) <= mf.NAME_MAX and long.startswith("tl-a") and long.endswith("-12")
    assert mf.object_name("a" * 62 + "b", 12) != long
    ex = KubernetesExecutor(RecordingKubeApi(), CFG, lambda _: seed_spec())
    p = ex.place("ft", 1, 2, ["0", "1", "2", "3"])
    assert (p.worker_count, p.node) == (2, NS)
    assert p.env_vars["PET_NNODES"] == "2" and p.env_vars["PET_NPROC_PER_NODE"] == "2"
    assert p.env_vars["PET_MASTER_ADDR"] == "tl-ft-1-0.tl-ft-1" and p.env_vars["PET_MASTER_PORT"] == "29500"
    assert "CUDA_VISIBLE_DEVICES" not in p.env_vars and "PET_NODE_RANK" not in p.env_vars
    tj = KubernetesExecutor(RecordingKubeApi(), CFG, lambda _: seed_spec(), engine="trainjob")
    assert tj.place("ft", 1, 2, ["0", "1"]).env_vars["PET_MASTER_ADDR"] == "tl-ft-1-node-0-0.tl-ft-1"
    assert ex.place("ft", 1, 1, []).env_vars["PET_MASTER_ADDR"] == "127.0.0.1"


# -- the executor against the recording API -----------------------------------------------------
def executor(api: RecordingKubeApi, engine: str = "job", **fields: Any) -> KubernetesExecutor:
    return KubernetesExecutor(api, CFG, lambda _: seed_spec(**fields), engine=engine)


def test_start_creates_the_job_then_its_service() -> None:
    api = RecordingKubeApi()
    ex = executor(api, workers=2)
    ref = ex.start("ft", 1, ex.place("ft", 1, 2, ["0", "1"]))
    assert ref == f"{NS}/tl-ft-1"
    assert api.verbs() == [("list", "jobs.batch"), ("create", "jobs.batch"), ("create", "services")]
    assert api.calls[0].options == {"labelSelector": "tunelab.dev/job=ft"}
    job_body, svc_body = api.calls[1].body, api.calls[2].body
    assert job_body == mf.job_manifest(CFG, "ft", 1, seed_spec(workers=2), 2)
    created_uid = api.obj(JOBS, NS, "tl-ft-1")["metadata"]["uid"]
    assert svc_body == mf.service_manifest(
        CFG, "ft", 1, {"metadata": {"name": "tl-ft-1", "uid": created_uid}}
    )

    one = RecordingKubeApi()
    ex1 = executor(one)
    assert ex1.start("solo", 1, ex1.place("solo", 1, 1, ["0"])) == f"{NS}/tl-solo-1"
    assert one.verbs() == [("list", "jobs.batch"), ("create", "jobs.batch")]  # no Service for one pod

    tapi = RecordingKubeApi()
    tex = executor(tapi, engine="trainjob", workers=2)
    assert tex.start("ft", 1, tex.place("ft", 1, 2, ["0", "1"])) == f"{NS}/trainjobs/tl-ft-1"
    res = TRAINJOBS.resource
    assert tapi.verbs() == [("list", res), ("create", res)]
    assert tapi.calls[1].body == mf.trainjob_manifest(CFG, "ft", 1, seed_spec(workers=2), 2, 1)


def test_start_sweeps_what_earlier_attempts_left_running() -> None:
    api = RecordingKubeApi()
    ex = executor(api)
    ex.start("ft", 1, ex.place("ft", 1, 1, ["0"]))
    ex.start("ft", 2, ex.place("ft", 2, 1, ["0"]))  # attempt 1 still suspended (preempted by Kueue)
    api.set_status(JOBS, NS, "tl-ft-2", {"conditions": [{"type": "Complete", "status": "True"}]})
    ex.start("ft", 3, ex.place("ft", 3, 1, ["0"]))  # attempt 2 finished: kept for its TTL
    deletes = [(c.name, c.options["propagationPolicy"]) for c in api.calls if c.verb == "delete"]
    assert deletes == [("tl-ft-1", "Background")]
    assert {name for (_, _, name) in api.objects} == {"tl-ft-2", "tl-ft-3"}


def test_status_from_the_job_and_its_pods() -> None:
    api = RecordingKubeApi()
    ex = executor(api)
    ref = ex.start("ft", 1, ex.place("ft", 1, 1, ["0"]))
    name = "tl-ft-1"
    pod_labels = {"batch.kubernetes.io/job-name": name}

    st = ex.status(ref)  # created suspended: Kueue has not admitted it
    assert st.alive and "Kueue" in st.pending and "LocalQueue default" in st.pending

    api.set_status(JOBS, NS, name, {"active": 1}, suspend=False)  # admitted; the pod is being scheduled
    api.add_pod(NS, "tl-ft-1-0-abcde", pod_labels, {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}],
    })  # fmt: skip
    st = ex.status(ref)
    assert st.alive and "Unschedulable" in st.pending and "Insufficient nvidia.com/gpu" in st.pending

    api.obj(PODS, NS, "tl-ft-1-0-abcde")["status"] = {"phase": "Running"}
    st = ex.status(ref)
    assert st.alive and not st.pending
    api.set_status(JOBS, NS, name, {"active": 1, "ready": 1})
    calls = len(api.calls)
    assert ex.alive(ref) and ex.status(ref).pending == ""
    assert api.verbs()[calls:] == [("get", "jobs.batch")] * 2  # ready pods: no need to list them

    api.set_status(JOBS, NS, name, {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    st = ex.status(ref)
    assert not st.alive and st.reason == "Lost" and "did not report" in st.message

    api.obj(PODS, NS, "tl-ft-1-0-abcde")["status"] = {
        "phase": "Failed",
        "containerStatuses": [
            {"name": "agent", "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
        ],
    }
    api.logs[(NS, "tl-ft-1-0-abcde")] = "\n".join(f"line {i}" for i in range(50)) + "\n[agent] no assignment"
    api.set_status(JOBS, NS, name, {"failed": 1, "conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"},
    ]})  # fmt: skip
    st = ex.status(ref)
    assert not st.alive and st.reason == "PodFailed"
    assert "BackoffLimitExceeded: Job has reached the specified backoff limit" in st.message
    assert "OOMKilled (exit code 137)" in st.message and st.message.endswith("[agent] no assignment")
    assert "line 31" in st.message and "line 30\n" not in st.message  # the last 20 lines
    assert api.calls[-1].options == {"container": "agent", "tail": 20}

    api.set_status(JOBS, NS, name, {"active": 1})
    api.obj(PODS, NS, "tl-ft-1-0-abcde")["status"] = {
        "phase": "Pending",
        "containerStatuses": [{"name": "agent", "state": {"waiting": {
            "reason": "CreateContainerConfigError", "message": 'secret "tunelab-secrets" not found'}}}],
    }  # fmt: skip
    st = ex.status(ref)
    assert (
        not st.alive and st.reason == "PodConfigError" and 'secret "tunelab-secrets" not found' in st.message
    )

    api.fail("get", JOBS, 500, "InternalError", "etcdserver: request timed out")
    assert ex.status(ref).alive  # cannot tell: the agent's heartbeat decides
    api.failures.clear()
    api.objects.clear()
    st = ex.status(ref)
    assert not st.alive and st.reason == "Lost" and "is gone" in st.message


def test_trainjob_status() -> None:
    api = RecordingKubeApi()
    ex = executor(api, engine="trainjob")
    ref = ex.start("ft", 1, ex.place("ft", 1, 1, ["0"]))
    assert "Kueue" in ex.status(ref).pending
    api.set_status(
        TRAINJOBS, NS, "tl-ft-1", {"jobsStatus": [{"name": "node", "ready": 1, "active": 1}]}, False
    )
    assert ex.status(ref).alive and not ex.status(ref).pending
    failed = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too long"}
    api.set_status(TRAINJOBS, NS, "tl-ft-1", {"conditions": [failed]})
    st = ex.status(ref)
    assert not st.alive and "DeadlineExceeded: too long" in st.message
    assert ("list", "pods") in api.verbs() and "jobset.sigs.k8s.io/jobset-name=tl-ft-1" in str(
        api.calls[-1].options
    )


def test_stop_and_kill_delete_with_propagation() -> None:
    api = RecordingKubeApi()
    ex = executor(api)
    ref = ex.start("ft", 1, ex.place("ft", 1, 1, ["0"]))
    api.add_pod(NS, "tl-ft-1-0-x", {"batch.kubernetes.io/job-name": "tl-ft-1"}, {"phase": "Running"})
    ex.stop(ref)
    assert (api.calls[-1].verb, api.calls[-1].options["propagationPolicy"]) == ("delete", "Foreground")
    ex.stop(ref)  # gone already: nothing to do
    ex.kill(ref)
    kills = [(c.resource, c.name, c.options) for c in api.calls if c.verb == "delete"][2:]
    assert kills == [
        ("jobs.batch", "tl-ft-1", {"propagationPolicy": "Background", "gracePeriodSeconds": None}),
        ("pods", "tl-ft-1-0-x", {"propagationPolicy": "Background", "gracePeriodSeconds": 0}),
    ]
    tex = executor(RecordingKubeApi(), engine="trainjob")
    tref = tex.start("ft", 1, tex.place("ft", 1, 1, ["0"]))
    tex.stop(tref)
    assert tex.api.calls[-1].resource == TRAINJOBS.resource  # type: ignore[attr-defined]

    api.put(JOBS, {"metadata": {"name": "tl-ft-1", "namespace": NS}})
    api.fail("delete", JOBS, 403, "Forbidden", 'jobs.batch "tl-ft-1" is forbidden')
    with pytest.raises(PermissionDenied, match=r"verbs \[delete\]"):
        ex.stop(ref)
    ex.kill(ref)  # logged, not raised: the supervisor goes on


def test_conflicts_adopt_our_own_and_refuse_others() -> None:
    api = RecordingKubeApi()
    ex = executor(api, workers=2)
    placement = ex.place("ft", 1, 2, ["0", "1"])
    first = ex.start("ft", 1, placement)
    # The same attempt again (a trainer that restarted between creating and recording it): adopted.
    assert ex.start("ft", 1, placement) == first
    assert api.verbs()[-4:] == [
        ("create", "jobs.batch"), ("get", "jobs.batch"), ("create", "services"), ("get", "services"),
    ]  # fmt: skip
    api.put(JOBS, {"metadata": {"name": "tl-other-1", "namespace": NS, "labels": {"app": "not-ours"}}})
    with pytest.raises(AlreadyExists, match=r"kubectl -n ml delete jobs.batch tl-other-1"):
        ex.start("other", 1, ex.place("other", 1, 2, ["0", "1"]))


def test_refusals_become_typed_errors_that_say_what_to_do() -> None:
    api = RecordingKubeApi()
    ex = executor(api, workers=2)
    forbidden = (
        'jobs.batch is forbidden: User "system:serviceaccount:ml:trainer" cannot create resource "jobs" '
        'in API group "batch" in the namespace "ml"'
    )
    api.fail("create", JOBS, 403, "Forbidden", forbidden)
    with pytest.raises(PermissionDenied) as err:
        ex.start("ft", 1, ex.place("ft", 1, 2, ["0", "1"]))
    assert 'apiGroups ["batch"], resources [jobs], verbs [create]' in err.value.message
    assert "system:serviceaccount:ml:trainer" in err.value.message

    api.failures.clear()
    api.fail("create", SERVICES, 403, "Forbidden", "services is forbidden")
    with pytest.raises(PermissionDenied, match=r'apiGroups \[""\], resources \[services\]'):
        ex.start("ft", 2, ex.place("ft", 2, 2, ["0", "1"]))
    assert (JOBS.resource, NS, "tl-ft-2") not in api.objects  # the Job it made is deleted again

    api.failures.clear()
    api.fail("create", JOBS, 422, "Invalid", 'Job.batch "tl-ft-3" is invalid: spec.template...')
    with pytest.raises(InvalidArgument, match="is invalid"):
        ex.start("ft", 3, ex.place("ft", 3, 2, ["0", "1"]))

    tapi = RecordingKubeApi()
    tex = executor(tapi, engine="trainjob")
    tapi.fail("create", TRAINJOBS, 404, "NotFound", "the server could not find the requested resource")
    with pytest.raises(FailedPrecondition, match=r"install Kubeflow Trainer v2.*TUNELAB_K8S_ENGINE=job"):
        tex.start("ft", 1, tex.place("ft", 1, 1, ["0"]))


# -- the real client, against a local HTTP server ---------------------------------------------
class ApiServer(BaseHTTPRequestHandler):
    """Records each request and answers as the API server would for the paths the test uses."""

    requests: list[tuple[str, str, str, Any]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body: Any = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((self.command, self.path, self.headers.get("Authorization", ""), body))
        status, answer = 200, {}
        if self.command == "POST" and self.path.endswith("/jobs"):
            status, answer = 201, {**body, "metadata": {**body["metadata"], "uid": "u-1"}}
        elif self.path.endswith("/jobs/missing"):
            status, answer = (
                404,
                {"kind": "Status", "reason": "NotFound", "message": 'jobs.batch "missing" not found'},
            )
        elif self.path.startswith("/api/v1/namespaces/ml/pods?"):
            answer = {"kind": "PodList", "items": [{"metadata": {"name": "p-0"}}]}
        elif "/log?" in self.path:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"one\ntwo\n")
            return
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_rest_api_over_the_kubernetes_client(tmp_path: Path) -> None:
    from tunelab.trainer.kube.client import connect

    server = ThreadingHTTPServer(("127.0.0.1", 0), ApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "u", "user": {"token": "k8s-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    ApiServer.requests = []
    try:
        api = connect(str(kubeconfig))
        job = mf.job_manifest(CFG, "ft", 1, seed_spec(), 1)
        assert api.create(JOBS, NS, job)["metadata"]["uid"] == "u-1"
        with pytest.raises(KubeApiError) as err:
            api.get(JOBS, NS, "missing")
        assert (err.value.status, err.value.message) == (404, 'jobs.batch "missing" not found')
        assert [p["metadata"]["name"] for p in api.list(PODS, NS, "a=b,c=d")] == ["p-0"]
        api.delete(JOBS, NS, "tl-ft-1", "Foreground")
        api.delete(PODS, NS, "p-0", "Background", grace_s=0)
        assert api.log(NS, "p-0", "agent", 20) == "one\ntwo\n"
        api.create(TRAINJOBS, NS, {"metadata": {"name": "x"}})
    finally:
        server.shutdown()
        server.server_close()
    sent = [(m, p, b) for m, p, _, b in ApiServer.requests]
    assert sent == [
        ("POST", "/apis/batch/v1/namespaces/ml/jobs", job),
        ("GET", "/apis/batch/v1/namespaces/ml/jobs/missing", None),
        ("GET", "/api/v1/namespaces/ml/pods?labelSelector=a%3Db%2Cc%3Dd", None),
        ("DELETE", "/apis/batch/v1/namespaces/ml/jobs/tl-ft-1",
         {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"}),
        ("DELETE", "/api/v1/namespaces/ml/pods/p-0",
         {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background",
          "gracePeriodSeconds": 0}),
        ("GET", "/api/v1/namespaces/ml/pods/p-0/log?container=agent&tailLines=20", None),
        ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs", {"metadata": {"name": "x"}}),
    ]  # fmt: skip
    assert {auth for _, _, auth, _ in ApiServer.requests} == {"Bearer k8s-token"}

    unreachable = connect(str(kubeconfig))  # the server is gone now
    with pytest.raises(KubeApiError) as err:
        unreachable.get(JOBS, NS, "x")
    assert err.value.status == 0
    with pytest.raises(FailedPrecondition, match="KUBECONFIG"):
        connect(str(tmp_path / "no-such-kubeconfig"))


# -- the trainer with TUNELAB_EXECUTOR=kubernetes -----------------------------------------------
def kube_settings(tmp_path: Path, datasets_addr: str, **overrides: Any) -> Any:
    from tunelab.trainer.settings import TrainerSettings

    port = free_port()
    values: dict[str, Any] = {
        "data_dir": tmp_path / "trainer-data",
        "host": "127.0.0.1",
        "port": port,
        "metrics_port": 0,
        "datasets_addr": datasets_addr,
        "environments_addr": f"127.0.0.1:{free_port()}",
        "auth_token": TOKEN,
        "agent_trainer_addr": f"127.0.0.1:{port}",  # what the trainer's Service name resolves to
        "schedule_interval_s": 0.2,
        "report_interval_s": 0.3,
        "heartbeat_timeout_s": 8.0,  # the agent's start on a busy machine, as a pod's would take
        "backoff_base_s": 0.2,
        "cancel_grace_s": 3.0,
        "gpus": 2,
        "executor": "kubernetes",
        "k8s_namespace": NS,
        "k8s_job_image": "ghcr.io/tunelab/job:test",
        "k8s_token_secret": "/".join(SECRET),
        "k8s_service_account": "tunelab-job",
        "k8s_cache_pvc": "tunelab-cache",
    }
    return TrainerSettings(**{**values, **overrides})


@pytest.fixture
def kube_stack(tmp_path: Path, datasets_service: Any) -> Iterator[SimpleNamespace]:
    """The trainer in this process, its Kubernetes executor on the recording API."""
    from tunelab.cli.clients.trainer import TrainerClient
    from tunelab.common.grpc.channel import open_channel
    from tunelab.trainer.server import build_server
    from tunelab.trainer.service import build_trainer

    api = RecordingKubeApi()
    settings = kube_settings(tmp_path, datasets_service.address)
    trainer = build_trainer(settings, kube_api=api)
    server, _ = build_server(settings, trainer)
    server.start()
    trainer.start()
    channel = open_channel(server.address, TOKEN)
    pods: list[subprocess.Popen[bytes]] = []
    yield SimpleNamespace(api=api, client=TrainerClient(channel), settings=settings, pods=pods)
    for proc in pods:
        proc.kill()
        proc.wait()
    channel.close()
    server.stop(1)


def created(api: RecordingKubeApi, name: str) -> dict[str, Any]:
    calls = wait_until(
        lambda: [c for c in api.calls if c.verb == "create" and c.name == name], what=f"{name} created"
    )
    return calls[0].body  # type: ignore[no-any-return]


def test_a_job_runs_as_a_kubernetes_job(kube_stack: SimpleNamespace, tmp_path: Path) -> None:
    client, api, settings = kube_stack.client, kube_stack.api, kube_stack.settings
    gpu = pb.Resources(cpu_millis=1000, memory_bytes=GIB, gpu_count=1)
    job = client.submit(spec(py("print('hello from the pod')"), resources=gpu, priority_class="high"), "ft")
    body = created(api, "tl-ft-1")
    assert body["kind"] == "Job" and body["metadata"]["namespace"] == NS
    assert body["metadata"]["labels"][mf.KUEUE_QUEUE] == "default"
    assert body["metadata"]["labels"][mf.KUEUE_PRIORITY] == "high" and body["spec"]["suspend"] is True
    (container,) = pod_of(body)["containers"]
    assert container["image"] == "ghcr.io/tunelab/job:test"
    assert container["resources"]["limits"] == {"cpu": "1", "memory": str(GIB), "nvidia.com/gpu": "1"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TUNELAB_TRAINER_ADDR"] == settings.agent_trainer_addr
    assert (
        env["TUNELAB_DATASETS_ADDR"] == settings.datasets_addr and env["TUNELAB_TOKEN"] is None
    )  # a Secret's

    # Kueue holds it for longer than the heartbeat timeout: it waits, saying why, and is not lost.
    wait_until(lambda: "Kueue" in client.get(job.name).phase, what="the pending phase")
    time.sleep(settings.heartbeat_timeout_s + 1)
    waiting = client.get(job.name)
    assert (waiting.state, waiting.executor, waiting.executor_ref) == (
        STARTING,
        "kubernetes",
        f"{NS}/tl-ft-1",
    )
    assert "LocalQueue default" in waiting.phase

    # Kueue admits it, the kubelet starts the pod: here, the pod's container as a process.
    api.set_status(JOBS, NS, "tl-ft-1", {"active": 1}, suspend=False)
    (tmp_path / "pod-tmp").mkdir()
    mounts = {mf.CACHE_DIR: tmp_path / "pod-cache", "/tmp": tmp_path / "pod-tmp"}
    log = tmp_path / "pod.log"
    kube_stack.pods.append(run_container(container, 0, mounts, {SECRET: TOKEN}, log))
    api.set_status(JOBS, NS, "tl-ft-1", {"active": 1, "ready": 1})
    done = wait_for(client, job.name, timeout=120)
    assert done.state == SUCCEEDED, f"{done.reason}: {done.message}\n{log.read_text()}"
    assert kube_stack.pods[0].wait(60) == 0
    assert "hello from the pod" in log_text(client, job.name)
    assert "attempt 1 of jobs/ft" in log.read_text()  # the agent's own output, as kubectl logs shows it


def test_cancel_and_failures_through_the_trainer(kube_stack: SimpleNamespace) -> None:
    client, api = kube_stack.client, kube_stack.api
    never = {"restart_policy": pb.RESTART_POLICY_NEVER}

    # cancelled while Kueue holds it: deleted (Foreground), then CANCELLED once it is gone
    waits = client.submit(spec(py("pass"), **never), "waits")
    created(api, "tl-waits-1")
    wait_until(lambda: "Kueue" in client.get(waits.name).phase, what="the pending phase")
    client.cancel(waits.name)
    assert wait_for(client, waits.name).state == CANCELLED
    deletes = [
        c.options["propagationPolicy"] for c in api.calls if c.verb == "delete" and c.name == "tl-waits-1"
    ]
    assert deletes[0] == "Foreground"

    # its pod fails before the agent could report: the reason and the pod's log reach the job
    broken = client.submit(spec(py("pass"), **never), "broken")
    created(api, "tl-broken-1")
    api.add_pod(NS, "tl-broken-1-0-x", {"batch.kubernetes.io/job-name": "tl-broken-1"}, {
        "phase": "Failed",
        "containerStatuses": [{"name": "agent", "state": {"terminated": {"reason": "Error", "exitCode": 3}}}],
    })  # fmt: skip
    api.logs[(NS, "tl-broken-1-0-x")] = "[agent] no assignment for jobs/broken attempt 1: failed to connect"
    gave_up = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "limit"}
    api.set_status(JOBS, NS, "tl-broken-1", {"failed": 1, "conditions": [gave_up]}, suspend=False)
    failed = wait_for(client, broken.name)
    assert (failed.state, failed.reason) == (FAILED, "PodFailed")
    assert "exit code 3" in failed.message and "failed to connect" in failed.message
    assert ("tl-broken-1", "Background") in [(c.name, c.options.get("propagationPolicy")) for c in api.calls]

    # the trainer may not create Jobs: the attempt fails with what to grant
    api.fail("create", JOBS, 403, "Forbidden", "jobs.batch is forbidden")
    denied = wait_for(client, client.submit(spec(py("pass"), **never), "denied").name)
    assert (denied.state, denied.reason) == (FAILED, "ExecutorError")
    assert "verbs [create]" in denied.message and "trainer's Role" in denied.message


def test_settings_select_and_check_the_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.common.settings import load_settings
    from tunelab.trainer.service import build_trainer
    from tunelab.trainer.settings import TrainerSettings

    for key, value in {
        "TUNELAB_EXECUTOR": "kubernetes",
        "TUNELAB_K8S_NAMESPACE": "ml",
        "TUNELAB_K8S_JOB_IMAGE": "ghcr.io/tunelab/job:0.1.0",
        "TUNELAB_K8S_ENGINE": "trainjob",
    }.items():
        monkeypatch.setenv(key, value)
    s = load_settings(TrainerSettings)
    assert (s.executor, s.k8s_namespace, s.k8s_job_image, s.k8s_engine) == (
        "kubernetes", "ml", "ghcr.io/tunelab/job:0.1.0", "trainjob",
    )  # fmt: skip
    monkeypatch.setenv("TUNELAB_K8S_ENGINE", "pytorchjob")
    with pytest.raises(InvalidArgument, match="TUNELAB_K8S_ENGINE"):
        load_settings(TrainerSettings)
    monkeypatch.delenv("TUNELAB_K8S_ENGINE")

    settings = kube_settings(tmp_path, "127.0.0.1:1", k8s_job_image="")
    with pytest.raises(InvalidArgument, match="TUNELAB_K8S_JOB_IMAGE is not set"):
        build_trainer(settings, kube_api=RecordingKubeApi())
    trainer = build_trainer(
        kube_settings(tmp_path, "127.0.0.1:1", k8s_engine="trainjob"), kube_api=RecordingKubeApi()
    )
    try:
        assert trainer.executor.name == "kubernetes" and trainer.capacity().total_gpus == 2
    finally:
        trainer.close()


def test_only_worker_0_ends_a_multi_worker_attempt_on_success(kube_stack: SimpleNamespace) -> None:
    """Worker 0 commits the outputs, so its exit ends the attempt; another worker's success only
    means its share is done; any worker's failure ends the attempt at once."""
    client, api = kube_stack.client, kube_stack.api

    def report(job: str, worker: int, *events: pb.JobEvent) -> None:
        for seq, e in enumerate(events, start=1):
            e.sequence = seq
        req = pb.ReportJobEventsRequest(name=job, attempt=1, worker_index=worker, events=list(events))
        client.stub.ReportJobEvents(req)

    running = pb.JobEvent(phase=pb.PhaseEvent(state=pb.Job.STATE_RUNNING, phase="running"))
    never = {"restart_policy": pb.RESTART_POLICY_NEVER}
    for name in ("ok2", "bad2"):
        job = client.submit(spec(py("pass"), workers=2, **never), name)
        created(api, f"tl-{name}-1")
        api.set_status(JOBS, NS, f"tl-{name}-1", {"active": 2, "ready": 2}, suspend=False)
        for worker in (0, 1):
            report(job.name, worker, pb.JobEvent(phase=running.phase))
        wait_until(lambda n=job.name: client.get(n).state == pb.Job.STATE_RUNNING, what="running")

    # ok2: worker 1 succeeds first, and the attempt goes on until worker 0 does.
    report("jobs/ok2", 1, pb.JobEvent(phase=running.phase), pb.JobEvent(exit=pb.ExitEvent(exit_code=0)))
    time.sleep(1.0)  # several scheduling passes
    assert client.get("jobs/ok2").state == pb.Job.STATE_RUNNING
    report("jobs/ok2", 0, pb.JobEvent(phase=running.phase), pb.JobEvent(exit=pb.ExitEvent(exit_code=0)))
    assert wait_for(client, "jobs/ok2").state == SUCCEEDED

    # bad2: worker 1 fails, which ends the attempt while worker 0 still runs.
    failed = pb.JobEvent(exit=pb.ExitEvent(exit_code=2, reason="NonZeroExit", message="exit 2"))
    report("jobs/bad2", 1, pb.JobEvent(phase=running.phase), failed)
    done = wait_for(client, "jobs/bad2")
    assert done.state == FAILED and done.reason == "NonZeroExit", (done.reason, done.message)
