"""Server workloads on the Kubernetes executor: a Deployment of one pod running the job agent and a
Service in front of it, per attempt. With the stand-ins of test_kube_executor.py (no cluster can run
here): the objects pass ``kubernetes-validate --strict``, the executor's calls run against the
recording API, and a whole trainer runs the generated pod's container as a process serving HTTP.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from test_kube_executor import (
    CFG,
    KUBERNETES_VALIDATE,
    NS,
    REPO,
    SECRET,
    TOKEN,
    kube_settings,
    pod_of,
    seed_spec,
    validate,
)

from jobhelpers import CANCELLED, RUNNING, STARTING, free_port, spec, wait_for, wait_until
from kubehelpers import RecordingKubeApi, run_container
from tunelab.common.errors import PermissionDenied
from tunelab.trainer.kube import manifests as mf
from tunelab.trainer.kube import servers
from tunelab.trainer.kube.api import DEPLOYMENTS, PODS, SERVICES
from tunelab.trainer.kube.executor import KubernetesExecutor
from tunelab.trainer.v1 import trainer_pb2 as pb

VLLM = shlex.split(
    "vllm serve /models/base --host 0.0.0.0 --port $PORT --served-model-name chatglm3-6b "
    "--enable-lora --max-lora-rank 64 --lora-modules ad=/models/adapters/ad"
)
SERVER = """
import http.server, os, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"attempt {os.environ['TUNELAB_ATTEMPT']} pid {os.getpid()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def server_spec(**fields: Any) -> pb.JobSpec:
    values: dict[str, Any] = {
        "workload": pb.WORKLOAD_SERVER,
        "restart_policy": pb.RESTART_POLICY_ALWAYS,
        "command": VLLM,
        "working_dir": "/models",
        "env_vars": {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
    }
    return seed_spec(**{**values, **fields})


# -- manifests ----------------------------------------------------------------------------------
def test_a_server_is_a_deployment_and_a_service_that_pass_kubernetes_validate(tmp_path: Path) -> None:
    s = server_spec()
    dep = servers.deployment_manifest(CFG, "vllm-r0", 1, s)
    svc = servers.service_manifest(CFG, "vllm-r0", 1, s, {"metadata": {"name": "tl-vllm-r0-1", "uid": "d-1"}})
    plain_cfg = mf.PodConfig(namespace=NS, image="job:1", kueue=False)
    fixed = server_spec(port=9000, resources=pb.Resources())
    docs = [dep, svc, servers.deployment_manifest(plain_cfg, "x", 2, fixed)]
    docs.append(servers.service_manifest(plain_cfg, "x", 2, fixed))
    result = validate(tmp_path, docs, *KUBERNETES_VALIDATE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 8  # four objects, two Kubernetes versions

    assert (dep["apiVersion"], dep["kind"], dep["metadata"]["name"]) == (
        "apps/v1",
        "Deployment",
        "tl-vllm-r0-1",
    )
    assert dep["metadata"]["labels"][mf.KUEUE_QUEUE] == "default"
    assert (dep["spec"]["replicas"], dep["spec"]["strategy"]) == (1, {"type": "Recreate"})
    template = dep["spec"]["template"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert template["metadata"]["labels"][mf.KUEUE_QUEUE] == "default"  # Kueue's pod integration
    pod, job_pod = pod_of(dep), pod_of(mf.job_manifest(CFG, "vllm-r0", 1, s, 1))
    assert pod["restartPolicy"] == "Always"
    for same in (
        "securityContext",
        "volumes",
        "serviceAccountName",
        "tolerations",
        "automountServiceAccountToken",
    ):
        assert pod[same] == job_pod[same], same
    (c,), (jc,) = pod["containers"], job_pod["containers"]
    for same in ("image", "command", "resources", "securityContext", "volumeMounts"):
        assert c[same] == jc[same], same
    assert c["args"] == ["--job", "jobs/vllm-r0", "--attempt", "1", "--worker", "0"]
    assert "PET_NODE_RANK" not in {e["name"] for e in c["env"]}  # no completion index in a Deployment
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["ports"] == [{"name": "http", "containerPort": 8000}]
    assert c["readinessProbe"]["tcpSocket"] == {"port": "http"} and "livenessProbe" not in c

    assert svc["spec"]["selector"] == selector and "clusterIP" not in svc["spec"]  # a ClusterIP
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "appProtocol": "http"}
    ]
    owner = svc["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Deployment", "tl-vllm-r0-1", "d-1")
    assert docs[2]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 9000
    assert docs[3]["spec"]["ports"][0]["port"] == 9000
    assert not any(k.startswith("kueue.x-k8s.io/") for k in docs[2]["spec"]["template"]["metadata"]["labels"])


def test_the_rendered_vllm_example_is_current_and_valid(tmp_path: Path) -> None:
    """k8s/examples/vllm-server-workload.yaml is what the code renders now, and it validates (as
    scripts/validate-deploy.sh checks too)."""
    script = REPO / "scripts" / "render_workload_example.py"
    check = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    example = REPO / "k8s" / "examples" / "vllm-server-workload.yaml"
    docs = list(yaml.safe_load_all(example.read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    result = validate(tmp_path, docs, *KUBERNETES_VALIDATE)
    assert result.returncode == 0 and result.stdout.count("passed") == 4, result.stdout + result.stderr
    text = example.read_text()
    assert "--port 8000 --served-model-name chatglm3-6b --enable-lora" in text  # $PORT substituted
    assert "Job.endpoint while it runs: http://tl-vllm-chatglm3-6b-r0-1.tunelab.svc:8000" in text
    container = pod_of(docs[0])["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "/models" in {m["mountPath"] for m in container["volumeMounts"]}  # the working directory


# -- the executor against the recording API -----------------------------------------------------
def test_the_executor_places_starts_follows_and_deletes_a_server() -> None:
    api = RecordingKubeApi()
    ex = KubernetesExecutor(api, CFG, lambda _: server_spec())
    p = ex.place("srv", 1, 1, ["0"], server_port=0)
    assert (p.worker_count, p.env_vars["PORT"], p.endpoint) == (1, "8000", f"http://tl-srv-1.{NS}.svc:8000")
    assert ex.place("srv", 1, 1, [], server_port=9000).endpoint.endswith(":9000")
    assert ex.place("srv", 1, 1, ["0"]).endpoint == ""  # a batch job

    ref = ex.start("srv", 1, p)
    assert ref == f"{NS}/deployments/tl-srv-1"
    assert api.verbs() == [
        ("list", "deployments.apps"),
        ("create", "deployments.apps"),
        ("create", "services"),
    ]
    uid = api.obj(DEPLOYMENTS, NS, "tl-srv-1")["metadata"]["uid"]
    assert api.calls[1].body == servers.deployment_manifest(CFG, "srv", 1, server_spec())
    owner = {"metadata": {"name": "tl-srv-1", "uid": uid}}
    assert api.calls[2].body == servers.service_manifest(CFG, "srv", 1, server_spec(), owner)

    st = ex.status(ref)
    assert st.alive and "waiting for its pod" in st.pending
    labels = {servers.LABEL_SERVER: "tl-srv-1"}
    gated = {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}
    api.add_pod(NS, "tl-srv-1-5d9c-x", labels, {"phase": "Pending", "conditions": [gated]})
    assert "waiting for Kueue" in ex.status(ref).pending
    pod = api.obj(PODS, NS, "tl-srv-1-5d9c-x")
    pod["status"] = {"phase": "Running", "containerStatuses": [{"name": "agent", "restartCount": 0}]}
    st = ex.status(ref)
    assert st.alive and not st.pending
    api.set_status(DEPLOYMENTS, NS, "tl-srv-1", {"replicas": 1, "readyReplicas": 1})
    calls = len(api.calls)
    assert ex.status(ref).alive and api.verbs()[calls:] == [("get", "deployments.apps")]

    # The agent ended before its attempt did (here: out of memory); Kubernetes restarts it in vain.
    api.set_status(DEPLOYMENTS, NS, "tl-srv-1", {"replicas": 1})
    ended, waits = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}, {"reason": "CrashLoopBackOff"}
    pod["status"] = {"phase": "Running", "containerStatuses": [
        {"name": "agent", "restartCount": 1, "lastState": ended, "state": {"waiting": waits}},
    ]}  # fmt: skip
    api.logs[(NS, "tl-srv-1-5d9c-x")] = "[agent] started vllm serve"
    st = ex.status(ref)
    assert not st.alive and st.reason == "PodFailed"
    assert "OOMKilled (exit code 137)" in st.message and st.message.endswith("[agent] started vllm serve")

    pod["status"] = {"phase": "Pending", "containerStatuses": [
        {"name": "agent", "state": {"waiting": {"reason": "InvalidImageName", "message": "bad"}}},
    ]}  # fmt: skip
    assert (ex.status(ref).alive, ex.status(ref).reason) == (False, "ImageUnavailable")

    ex.stop(ref)
    assert (api.calls[-1].verb, api.calls[-1].resource, api.calls[-1].options["propagationPolicy"]) == (
        "delete",
        "deployments.apps",
        "Foreground",
    )
    assert ex.status(ref).reason == "Lost"  # gone
    ex.start("srv", 2, ex.place("srv", 2, 1, ["0"], 0))
    api.add_pod(NS, "tl-srv-2-6f7d-y", {servers.LABEL_SERVER: "tl-srv-2"}, {"phase": "Running"})
    ex.kill(f"{NS}/deployments/tl-srv-2")
    kills = [(c.resource, c.name, c.options["gracePeriodSeconds"]) for c in api.calls if c.verb == "delete"]
    assert kills[-3:] == [
        ("deployments.apps", "tl-srv-2", None),
        ("services", "tl-srv-2", None),
        ("pods", "tl-srv-2-6f7d-y", 0),
    ]


def test_a_new_attempt_sweeps_the_last_and_a_refused_service_takes_the_deployment_back() -> None:
    api = RecordingKubeApi()
    ex = KubernetesExecutor(api, CFG, lambda _: server_spec())
    ex.start("srv", 1, ex.place("srv", 1, 1, ["0"], 0))
    ex.start("srv", 2, ex.place("srv", 2, 1, ["0"], 0))  # attempt 1 still there (a trainer crash)
    deletes = [(c.resource, c.name) for c in api.calls if c.verb == "delete"]
    assert deletes == [("deployments.apps", "tl-srv-1")]

    api.fail("create", SERVICES, 403, "Forbidden", "services is forbidden")
    with pytest.raises(PermissionDenied, match=r"resources \[services\]"):
        ex.start("srv", 3, ex.place("srv", 3, 1, ["0"], 0))
    assert (DEPLOYMENTS.resource, NS, "tl-srv-3") not in api.objects


# -- the trainer with TUNELAB_EXECUTOR=kubernetes -----------------------------------------------
@pytest.fixture
def server_stack(tmp_path: Path, datasets_service: Any) -> Iterator[SimpleNamespace]:
    """The trainer in this process, its Kubernetes executor on the recording API, without Kueue."""
    from tunelab.cli.clients.trainer import TrainerClient
    from tunelab.common.grpc.channel import open_channel
    from tunelab.trainer.server import build_server
    from tunelab.trainer.service import build_trainer

    api = RecordingKubeApi()
    settings = kube_settings(tmp_path, datasets_service.address, k8s_kueue=False)
    trainer = build_trainer(settings, kube_api=api)
    server, _ = build_server(settings, trainer)
    server.start()
    trainer.start()
    channel = open_channel(server.address, TOKEN)
    pods: list[subprocess.Popen[bytes]] = []
    yield SimpleNamespace(api=api, client=TrainerClient(channel), pods=pods)
    for proc in pods:
        proc.kill()
        proc.wait()
    channel.close()
    server.stop(1)


def created(api: RecordingKubeApi, resource: str, name: str) -> dict[str, Any]:
    calls = wait_until(
        lambda: [c for c in api.calls if c.verb == "create" and (c.resource, c.name) == (resource, name)],
        what=f"{resource} {name} created",
    )
    return calls[0].body  # type: ignore[no-any-return]


def test_a_server_runs_as_a_deployment_through_the_trainer(
    server_stack: SimpleNamespace, tmp_path: Path
) -> None:
    client, api = server_stack.client, server_stack.api
    port = free_port()  # the Service's port; here the pod's process listens on it on this machine
    job = client.submit(
        spec(["python", "-c", SERVER, "$PORT"], workload=pb.WORKLOAD_SERVER, port=port, backoff_limit=2),
        "srv",
    )
    body = created(api, DEPLOYMENTS.resource, "tl-srv-1")
    assert created(api, SERVICES.resource, "tl-srv-1")["spec"]["ports"][0]["port"] == port
    wait_until(lambda: "waiting for its pod" in client.get(job.name).phase, what="the pending phase")

    # The kubelet starts the pod: here, its container as a process, and the pod as Running.
    (container,) = pod_of(body)["containers"]
    (tmp_path / "pod-tmp").mkdir()
    mounts = {mf.CACHE_DIR: tmp_path / "pod-cache", "/tmp": tmp_path / "pod-tmp"}
    server_stack.pods.append(run_container(container, 0, mounts, {SECRET: TOKEN}, tmp_path / "pod.log"))
    labels = {servers.LABEL_SERVER: "tl-srv-1"}
    api.add_pod(NS, "tl-srv-1-abc-x", labels, {"phase": "Running"})
    running = wait_for(client, job.name, [RUNNING, CANCELLED, pb.Job.STATE_FAILED], timeout=120)
    assert running.state == RUNNING, (running.reason, running.message, (tmp_path / "pod.log").read_text())
    assert running.endpoint == f"http://tl-srv-1.{NS}.svc:{port}"
    answer = wait_until(lambda: _fetch(f"http://127.0.0.1:{port}"), what="the server's answer")
    assert answer.startswith("attempt 1 pid ")

    # The server dies: the attempt ends, its Deployment and Service go, attempt 2 is a new Deployment.
    os.kill(int(answer.split()[3]), signal.SIGKILL)
    created(api, DEPLOYMENTS.resource, "tl-srv-2")
    deleted = {(c.resource, c.name) for c in api.calls if c.verb == "delete"}
    assert {("deployments.apps", "tl-srv-1"), ("services", "tl-srv-1")} <= deleted
    again = client.get(job.name)
    assert again.attempts[0].reason == "ServerExited" and again.endpoint == ""
    assert again.state in (STARTING, pb.Job.STATE_QUEUED)

    client.cancel(job.name)
    assert wait_for(client, job.name).state == CANCELLED
    assert (DEPLOYMENTS.resource, NS, "tl-srv-2") not in api.objects


def _fetch(url: str) -> str | None:
    try:
        with DIRECT.open(url, timeout=10) as response:
            return str(response.read().decode())
    except OSError:
        return None
