"""Kubernetes pods, simulated in Docker: each workload rendered from the prod overlay runs its
image as its pod would, and must pass its probes.

No cluster is obtainable here, so what a kubelet does that matters to an image is done by hand:
the pod's and container's securityContext (uid/gid, read-only root, dropped capabilities, no
privilege escalation), its env (ConfigMaps resolved; Secrets get generated values), and its volumes
as host folders created root-owned, with fsGroup applied (group ownership, setgid, g+rwx) to each
volume's root as the kubelet does, and mounts nested as the manifest nests them: a mount inside
another volume gets its mount point created by the runtime, as root. initContainers run first,
in order. The probe is the startup probe's gRPC health check, run inside the container.

What the cluster around a pod would provide is stood in for too: the prod overlay's external object
store is the S3 stand-in (``TUNELAB_S3_ENDPOINT`` pointed at it, plain http), and a pod that mounts
its service account token gets one (``/var/run/secrets/kubernetes.io/serviceaccount`` and
``KUBERNETES_SERVICE_HOST``) for an API server that is not there.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from engine import Engine
from stack import ROOT, StepFailed, step

OVERLAY = "k8s/overlays/prod"
NETWORK, S3_HOST = "pods", "object-store"
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
# The images the compose test builds, by the name the manifests give (the k8s trainer's own image
# carries CUDA torch; the CPU build of the same Dockerfile stands in for it).
IMAGES = {
    "datasets": "ghcr.io/tunelab/datasets:dev",
    "environments": "ghcr.io/tunelab/environments:dev",
    "gateway": "ghcr.io/tunelab/gateway:dev",
    "trainer": "ghcr.io/tunelab/trainer:dev-cpu",
}
SKIPPED = {"vllm": "vLLM's image needs a GPU and a registry (neither is here)"}
HEALTHCHECK = (
    "import grpc, sys\n"
    "from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g\n"
    "ch = grpc.insecure_channel('127.0.0.1:%d')\n"
    "r = g.HealthStub(ch).Check(h.HealthCheckRequest(service=''), timeout=4)\n"
    "sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)\n"
)


def render() -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / OVERLAY)], check=True, capture_output=True, text=True
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def container_env(c: dict[str, Any], configmaps: dict[str, dict[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif ref := var.get("valueFrom", {}).get("secretKeyRef"):
            if not ref.get("optional"):
                env[var["name"]] = secrets.token_urlsafe(12)
        elif ref := var.get("valueFrom", {}).get("configMapKeyRef"):
            env[var["name"]] = configmaps[ref["name"]][ref["key"]]
    return env


def docker_args(pod: dict[str, Any], c: dict[str, Any], folders: dict[str, Path]) -> list[str]:
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup"))
    args = ["--network", NETWORK]
    if uid is not None:
        args += ["--user", f"{uid}:{gid if gid is not None else 0}"]
    if "fsGroup" in psc:
        args += ["--group-add", str(psc["fsGroup"])]
    for g in psc.get("supplementalGroups", []):
        args += ["--group-add", str(g)]
    if csc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if csc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    drop = csc.get("capabilities", {}).get("drop", [])
    args += [f"--cap-drop={cap}" for cap in drop]
    args += [f"--cap-add={cap}" for cap in csc.get("capabilities", {}).get("add", [])]
    # Mounts in manifest order, outer before inner (a kubelet sorts them the same way).
    for m in sorted(c.get("volumeMounts", []), key=lambda m: m["mountPath"].count("/")):
        src = folders[m["name"]] / m.get("subPath", "")
        ro = ",readonly" if m.get("readOnly") else ""
        args += ["--mount", f"type=bind,source={src},target={m['mountPath']}{ro}"]
    return args


def make_volumes(pod: dict[str, Any], root: Path) -> dict[str, Path]:
    """Each volume a root-owned folder; fsGroup applied to PVCs and emptyDirs as a kubelet does."""
    fs_group = pod.get("securityContext", {}).get("fsGroup")
    folders = {}
    for vol in pod.get("volumes", []):
        folder = root / vol["name"]
        folder.mkdir(parents=True)
        os.chown(folder, 0, 0)
        folder.chmod(0o755)
        if fs_group is not None and ("persistentVolumeClaim" in vol or "emptyDir" in vol):
            os.chown(folder, 0, fs_group)
            folder.chmod(0o2775)
        folders[vol["name"]] = folder
    return folders


def run_pod(
    eng: Engine, name: str, pod: dict[str, Any], configmaps: dict[str, dict[str, str]], root: Path
) -> None:
    folders = make_volumes(pod, root / name)
    for init in pod.get("initContainers", []):
        argv = ["run", "--rm", "--name", f"pod-{name}-init", *docker_args(pod, init, folders)]
        for k, v in container_env(init, configmaps).items():
            argv += ["-e", f"{k}={v}"]
        image = IMAGES[name]
        if init.get("command"):
            argv += ["--entrypoint", init["command"][0], image, *init["command"][1:], *init.get("args", [])]
        else:
            argv += [image, *init.get("args", [])]
        result = eng.docker(*argv, check=False, capture=True)
        if result.returncode != 0:
            raise StepFailed(
                f"pod {name}: initContainer {init['name']} failed: {result.stdout}{result.stderr}"
            )
    c = pod["containers"][0]
    argv = ["run", "--detach", "--name", f"pod-{name}", *docker_args(pod, c, folders)]
    env = container_env(c, configmaps)
    if "TUNELAB_STORE_URL" in env and not env.get("TUNELAB_S3_ENDPOINT"):
        env |= {"TUNELAB_S3_ENDPOINT": f"{S3_HOST}:9000", "TUNELAB_S3_SECURE": "false"}
    if pod.get("automountServiceAccountToken", True):
        account = root / name / "serviceaccount"
        account.mkdir()
        (account / "token").write_text(secrets.token_urlsafe(32))
        (account / "namespace").write_text("tunelab")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=kubernetes",
             "-keyout", str(root / name / "ca.key"), "-out", str(account / "ca.crt")],
            check=True, capture_output=True,
        )  # fmt: skip
        for f in [account, *account.iterdir()]:
            f.chmod(0o755 if f.is_dir() else 0o644)
        argv += ["--mount", f"type=bind,source={account},target={SERVICE_ACCOUNT},readonly"]
        env |= {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    for k, v in env.items():
        argv += ["-e", f"{k}={v}"]
    if c.get("command"):
        argv += ["--entrypoint", c["command"][0]]
    argv += [IMAGES[name], *(c.get("command", [])[1:]), *c.get("args", [])]
    eng.docker(*argv, capture=True)
    try:
        probe = c.get("startupProbe") or c.get("readinessProbe")
        port = probe["grpc"]["port"]
        deadline = time.monotonic() + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3) + 30
        while True:
            state = json.loads(eng.docker("inspect", f"pod-{name}", capture=True).stdout)[0]["State"]
            if not state["Running"]:
                logs = eng.docker("logs", "--tail", "30", f"pod-{name}", check=False, capture=True)
                raise StepFailed(f"pod {name} exited ({state['ExitCode']}):\n{logs.stdout}{logs.stderr}")
            ok = eng.docker(
                "exec", f"pod-{name}", "python", "-c", HEALTHCHECK % port, check=False, capture=True
            )
            if ok.returncode == 0:
                print(f"  pod {name}: SERVING on its gRPC health port {port}", flush=True)
                return
            if time.monotonic() > deadline:
                logs = eng.docker("logs", "--tail", "30", f"pod-{name}", check=False, capture=True)
                raise StepFailed(f"pod {name} never passed its probe:\n{logs.stdout}{logs.stderr}")
            time.sleep(2)
    finally:
        eng.docker("rm", "--force", f"pod-{name}", check=False, capture=True)


def run_all(eng: Engine, work: Path) -> None:
    step(f"Kubernetes pods of {OVERLAY}, simulated: securityContext, env, nested volumes, probes")
    docs = render()
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    failures: list[str] = []
    eng.docker("network", "create", "--internal", NETWORK, capture=True)
    s3 = next(d for d in docs if d["kind"] == "ConfigMap" and "TUNELAB_STORE_URL" in d.get("data", {}))
    bucket = s3["data"]["TUNELAB_STORE_URL"].removeprefix("s3://").split("/")[0]
    eng.docker(
        "run", "--detach", "--name", S3_HOST, "--network", NETWORK, "--network-alias", S3_HOST,
        "minio/minio:RELEASE.2025-09-07T16-13-09Z", capture=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while eng.docker("exec", S3_HOST, "mc", "mb", f"local/{bucket}", check=False, capture=True).returncode:
        if time.monotonic() > deadline:
            raise StepFailed("the S3 stand-in for the pods did not start")
        time.sleep(1)
    try:
        _run_pods(eng, work, docs, configmaps, failures)
    finally:
        eng.docker("rm", "--force", S3_HOST, check=False, capture=True)
        eng.docker("network", "rm", NETWORK, check=False, capture=True)
    if failures:
        raise StepFailed(f"pods that did not pass their probes: {', '.join(failures)}")


def _run_pods(
    eng: Engine,
    work: Path,
    docs: list[dict[str, Any]],
    configmaps: dict[str, dict[str, str]],
    failures: list[str],
) -> None:
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        name = d["metadata"]["name"]
        if name in SKIPPED:
            print(f"  pod {name}: skipped, {SKIPPED[name]}", flush=True)
            continue
        try:
            run_pod(eng, name, d["spec"]["template"]["spec"], configmaps, work / "pods")
        except StepFailed as exc:
            print(f"  {exc}", flush=True)
            failures.append(name)
