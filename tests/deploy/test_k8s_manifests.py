"""The Kubernetes manifests (k8s/): every overlay builds with `kubectl kustomize`, passes
kubernetes-validate --strict (built-in kinds) and k8s/validate_crds.py (Kueue and other custom
kinds), and has the properties that matter: hardened containers, gRPC probes, the trainer's exact
RBAC, vLLM on a GPU with shared memory and LoRA, the Kueue queue with priorities high/medium/low.
No cluster runs here: this checks what `kubectl apply -k` would send, not how a cluster takes it.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunelab.trainer.settings import DEFAULT_PRIORITY_CLASSES

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
KUBECTL = shutil.which("kubectl")
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
ARGS = (K8S / "validate.args").read_text().split()
SERVICES = {"datasets": 50051, "environments": 50052, "trainer": 50053, "gateway": 50054}
# What the Kubernetes executor calls (its client has no watch); pods it only reads.
JOB_VERBS = {"create", "delete", "get", "list"}

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (needed for kustomize)")

Doc = dict[str, Any]


def kustomize(directory: Path) -> str:
    out = subprocess.run([KUBECTL or "kubectl", "kustomize", str(directory)], capture_output=True, text=True)
    assert out.returncode == 0, f"kubectl kustomize {directory} failed:\n{out.stderr}"
    return out.stdout


def docs_of(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, str, list[Doc]]:
    text = kustomize(K8S / "overlays" / request.param)
    return request.param, text, docs_of(text)


def kubernetes_validate(text: str, *args: str) -> subprocess.CompletedProcess[str]:
    if not VALIDATE.exists():
        pytest.skip(f"{VALIDATE} is missing (requirements-dev.txt installs it)")
    cmd = [str(VALIDATE), "--strict", *args, "-"]
    return subprocess.run(cmd, input=text, capture_output=True, text=True)


def validate_crds(text: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(K8S / "validate_crds.py"), *args, "-"]
    return subprocess.run(cmd, input=text, capture_output=True, text=True)


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[Doc]) -> list[tuple[str, Doc]]:
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    ]


def container(docs: list[Doc], deployment: str) -> Doc:
    containers = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == deployment)


def env(c: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in c.get("env", [])}


def schema_kinds() -> set[str]:
    return {p.name.rsplit("-", 1)[1].removesuffix(".json") for p in (K8S / "schemas").glob("*.json")}


# -- validation --------------------------------------------------------------------------------
def test_overlay_passes_kubernetes_validate_strict(overlay: tuple[str, str, list[Doc]]) -> None:
    _, text, docs = overlay
    for args in (ARGS, ["-k", "1.37.0"]):  # the pinned minimum (as scripts run it) and the newest
        out = kubernetes_validate(text, *args)
        assert out.returncode == 0 and "ERROR" not in out.stdout, out.stdout + out.stderr
        # It skips kinds it has no schema for with a WARN: those must be exactly the vendored ones.
        warned = {line.split("kind ")[1].split()[0] for line in out.stdout.splitlines() if "WARN" in line}
        assert {w.lower() for w in warned} <= schema_kinds(), warned
        assert out.stdout.count("passed for resource") + out.stdout.count("WARN") == len(docs)


def test_overlay_custom_resources_pass_vendored_schemas(overlay: tuple[str, str, list[Doc]]) -> None:
    out = validate_crds(overlay[1], *ARGS)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "custom resources valid" in out.stdout


def test_broken_manifests_fail_validation(overlay: tuple[str, str, list[Doc]]) -> None:
    docs = overlay[2]

    def broken(kind: str, name: str, change: Any) -> str:
        copied = copy.deepcopy(docs)
        change(one(copied, kind, name))
        return yaml.safe_dump_all(copied)

    typo = broken("Deployment", "trainer", lambda d: d["spec"]["template"]["spec"].update(restartPolcy="x"))
    assert kubernetes_validate(typo, *ARGS).returncode != 0
    cq_typo = broken("ClusterQueue", "tunelab", lambda d: d["spec"].update(cohort="old-v1beta1-name"))
    out = validate_crds(cq_typo, *ARGS)
    assert out.returncode == 1 and "cohort" in out.stdout, out.stdout
    bad_value = broken("WorkloadPriorityClass", "high", lambda d: d.update(value="high"))
    assert validate_crds(bad_value).returncode == 1
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"}}
    unknown = yaml.safe_dump(monitor)
    out = validate_crds(unknown)
    assert out.returncode == 1 and "no schema for ServiceMonitor" in out.stdout, out.stdout


def test_trainjob_schema_accepts_the_documented_shape_and_rejects_typos() -> None:
    """The shape of the reference TrainJob (Kueue labels, suspended, torch-distributed runtime)."""
    trainer = {"image": "ghcr.io/tunelab/job:0.1.0", "numNodes": 2, "command": ["tunelab", "agent"]}
    trainer["resourcesPerNode"] = {"limits": {"nvidia.com/gpu": "8"}}
    runtime = {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }
    job: Doc = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "lora-ft-123", "labels": {"kueue.x-k8s.io/queue-name": "default"}},
        "spec": {"runtimeRef": runtime, "suspend": True, "trainer": trainer},
    }
    assert validate_crds(yaml.safe_dump(job)).returncode == 0
    job["spec"]["trainer"]["numNode"] = 2
    assert validate_crds(yaml.safe_dump(job)).returncode == 1


# -- properties ---------------------------------------------------------------------------------
def test_every_container_is_hardened_and_sized(overlay: tuple[str, str, list[Doc]]) -> None:
    for where, spec in pod_specs(overlay[2]):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc, at = c.get("securityContext", {}), f"{where} container {c['name']}"
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, at
            assert sc.get("readOnlyRootFilesystem") is True, at
            assert sc.get("allowPrivilegeEscalation") is False, at
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], at
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", at
            assert not sc.get("privileged"), at
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(bound, {})), f"{at}: {bound}"
            assert ":" in c["image"].rsplit("/", 1)[-1] and not c["image"].endswith(":latest"), (
                f"{at}: pin {c['image']}"
            )


def test_services_have_grpc_probes_ports_and_secrets(overlay: tuple[str, str, list[Doc]]) -> None:
    docs = overlay[2]
    for svc, port in SERVICES.items():
        c = container(docs, svc)
        assert c["image"].startswith(f"ghcr.io/tunelab/{svc}:"), c["image"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == port, f"{svc} {probe}"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        variables = env(c)
        assert ports["grpc"] == port == int(variables["TUNELAB_PORT"]["value"])
        assert ports["metrics"] == int(variables["TUNELAB_METRICS_PORT"]["value"])
        refs = [
            v["valueFrom"]["secretKeyRef"]
            for v in variables.values()
            if "secretKeyRef" in v.get("valueFrom", {})
        ]
        secret_keys = {r["key"] for r in refs}
        assert "auth-token" in secret_keys, svc
        # Only the services that touch the object store get its keys.
        s3_keys = {"s3-access-key", "s3-secret-key"}
        assert (s3_keys <= secret_keys) == (svc in ("datasets", "environments")), svc
        assert s3_keys & secret_keys in (set(), s3_keys), svc
        service = one(docs, "Service", svc)
        assert {p["port"] for p in service["spec"]["ports"]} >= {port, ports["metrics"]}
        assert one(docs, "ServiceAccount", svc)
    gateway = container(docs, "gateway")
    assert {"name": "http", "containerPort": 8000} in gateway["ports"]
    assert data_of(docs, "tunelab-config")["TUNELAB_HOST"] == "0.0.0.0"


def test_references_resolve(overlay: tuple[str, str, list[Doc]]) -> None:
    """Every ConfigMap, Secret, PVC and ServiceAccount a pod names exists in the build; only prod's
    Secret comes from outside (created by the operator, documented in its kustomization)."""
    name, _, docs = overlay
    kinds = ("ConfigMap", "Secret", "PersistentVolumeClaim", "ServiceAccount")
    have = {k: {d["metadata"]["name"] for d in find(docs, k)} for k in kinds}
    if name.startswith("prod"):
        assert not find(docs, "Secret"), "prod must not carry secrets"
        have["Secret"] = {"tunelab-secrets"}
    for where, spec in pod_specs(docs):
        refs = [("ServiceAccount", spec.get("serviceAccountName", "default"))]
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                refs.append(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
            if "configMap" in v:
                refs.append(("ConfigMap", v["configMap"]["name"]))
        for c in spec["containers"]:
            refs += [("ConfigMap", e["configMapRef"]["name"]) for e in c.get("envFrom", [])]
            for var in c.get("env", []):
                source = var.get("valueFrom", {})
                if "configMapKeyRef" in source:
                    refs.append(("ConfigMap", source["configMapKeyRef"]["name"]))
                if "secretKeyRef" in source:
                    refs.append(("Secret", source["secretKeyRef"]["name"]))
        missing = [r for r in refs if r[1] not in have[r[0]] and r != ("ServiceAccount", "default")]
        assert not missing, f"{where} refers to {missing}"


def test_trainer_role_is_exactly_jobs_deployments_pods_services(overlay: tuple[str, str, list[Doc]]) -> None:
    docs = overlay[2]
    kinds = (("batch", "jobs"), ("apps", "deployments"), ("", "services"))
    expected = {(g, r, v) for g, r in kinds for v in JOB_VERBS}
    expected |= {("", "pods", "get"), ("", "pods", "list"), ("", "pods/log", "get")}
    assert rules_of(one(docs, "Role", "trainer")) == expected
    binding = one(docs, "RoleBinding", "trainer")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "trainer"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "trainer", "namespace": "tunelab"}]
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    trainer = container(docs, "trainer")
    variables = env(trainer)
    assert variables["TUNELAB_EXECUTOR"]["value"] == "kubernetes"
    assert variables["TUNELAB_K8S_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    names = list(variables)  # $(VAR) expands only variables defined earlier in the list
    assert names.index("TUNELAB_K8S_NAMESPACE") < names.index("TUNELAB_AGENT_TRAINER_ADDR")
    assert variables["TUNELAB_AGENT_TRAINER_ADDR"]["value"] == "trainer.$(TUNELAB_K8S_NAMESPACE).svc:50053"
    config = data_of(docs, "trainer-config")
    assert config["TUNELAB_K8S_ENGINE"] == "job"
    assert config["TUNELAB_K8S_JOB_IMAGE"].startswith("ghcr.io/tunelab/job:")
    assert config["TUNELAB_K8S_JOB_IMAGE"].split(":")[1] == trainer["image"].split(":")[1]
    for svc in SERVICES:  # only the trainer talks to the Kubernetes API
        pod = one(docs, "Deployment", svc)["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is (svc == "trainer"), svc


def rules_of(role: Doc) -> set[tuple[str, str, str]]:
    rules = role["rules"]
    return {(g, r, v) for x in rules for g in x["apiGroups"] for r in x["resources"] for v in x["verbs"]}


def test_kubeflow_trainer_component_adds_trainjobs_only(tmp_path: Path) -> None:
    rel = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"namespace: tunelab\nresources: [{rel}/base]\ncomponents: [{rel}/components/kubeflow-trainer]\n"
    )
    text = kustomize(tmp_path)
    docs = docs_of(text)
    added = rules_of(one(docs, "Role", "trainer")) - rules_of(
        one(docs_of(kustomize(K8S / "base")), "Role", "trainer")
    )
    assert added == {("trainer.kubeflow.org", "trainjobs", v) for v in JOB_VERBS}
    config = data_of(docs, "trainer-config")
    assert config["TUNELAB_K8S_ENGINE"] == "trainjob"
    assert kubernetes_validate(text, *ARGS).returncode == 0


def test_vllm_has_a_gpu_shared_memory_lora_and_the_gateways_models(
    overlay: tuple[str, str, list[Doc]],
) -> None:
    docs = overlay[2]
    pod = one(docs, "Deployment", "vllm")["spec"]["template"]["spec"]
    c = container(docs, "vllm")
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": 8000}, probe
    assert "--enable-lora" in " ".join(c.get("command", []) + c.get("args", []))
    assert env(c)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    gateway = one(docs, "Deployment", "gateway")["spec"]["template"]["spec"]
    g_claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in gateway["volumes"]}
    g_mount = next(
        m for m in container(docs, "gateway")["volumeMounts"] if g_claims.get(m["name"]) == "tunelab-models"
    )
    v_mount = next(m for m in c["volumeMounts"] if m["mountPath"] == g_mount["mountPath"])
    assert volumes[v_mount["name"]]["persistentVolumeClaim"]["claimName"] == "tunelab-models"
    assert one(docs, "PersistentVolumeClaim", "tunelab-models")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert one(docs, "PersistentVolumeClaim", "tunelab-cache")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert one(docs, "Service", "vllm")["spec"]["ports"][0]["port"] == 8000


def test_trainer_executor_settings_name_what_exists(overlay: tuple[str, str, list[Doc]]) -> None:
    """TUNELAB_K8S_* name the job pods' ServiceAccount, cache PVC and token Secret; the capacity the
    trainer hands out equals the ClusterQueue's quota."""
    name, _, docs = overlay
    config = data_of(docs, "trainer-config")
    assert (
        one(docs, "ServiceAccount", config["TUNELAB_K8S_SERVICE_ACCOUNT"])["automountServiceAccountToken"]
        is False
    )
    assert one(docs, "PersistentVolumeClaim", config["TUNELAB_K8S_CACHE_PVC"])["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]
    assert config["TUNELAB_K8S_TOKEN_SECRET"] == "tunelab-secrets"
    if name == "dev":  # generated without a hash suffix, so the name in the ConfigMap holds
        assert "auth-token" in one(docs, "Secret", "tunelab-secrets")["data"]
    assert config["TUNELAB_K8S_KUEUE"] == "true"
    quota = {
        r["name"]: r["nominalQuota"]
        for r in one(docs, "ClusterQueue", "tunelab")["spec"]["resourceGroups"][0]["flavors"][0]["resources"]
    }
    assert int(config["TUNELAB_GPUS"]) == int(quota["nvidia.com/gpu"])
    assert int(config["TUNELAB_CPU_MILLIS"]) == int(quota["cpu"]) * 1000
    assert int(config["TUNELAB_MEMORY_BYTES"]) == int(str(quota["memory"]).removesuffix("Gi")) * 2**30


def data_of(docs: list[Doc], configmap: str) -> dict[str, str]:
    """The data of a generated ConfigMap (its name carries a hash suffix)."""
    found = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].rsplit("-", 1)[0] == configmap]
    assert len(found) == 1, configmap
    return found[0]["data"]  # type: ignore[no-any-return]


def test_kueue_queue_and_priority_classes(overlay: tuple[str, str, list[Doc]]) -> None:
    docs = overlay[2]
    classes = {d["metadata"]["name"]: d["value"] for d in find(docs, "WorkloadPriorityClass")}
    assert classes == DEFAULT_PRIORITY_CLASSES  # the trainer's classes, same names and values
    queue = one(docs, "LocalQueue", "default")
    assert queue["metadata"]["namespace"] == "tunelab"
    cq = one(docs, "ClusterQueue", queue["spec"]["clusterQueue"])
    flavors = {f["name"] for g in cq["spec"]["resourceGroups"] for f in g["flavors"]}
    assert flavors <= {d["metadata"]["name"] for d in find(docs, "ResourceFlavor")}
    assert "nvidia.com/gpu" in cq["spec"]["resourceGroups"][0]["coveredResources"]
    namespace = one(docs, "Namespace", "tunelab")
    assert cq["spec"]["namespaceSelector"]["matchLabels"].items() <= namespace["metadata"]["labels"].items()
    for kind in ("ClusterQueue", "ResourceFlavor", "WorkloadPriorityClass"):  # cluster-scoped
        assert all("namespace" not in d["metadata"] for d in find(docs, kind)), kind


def test_dev_runs_minio_and_prometheus_prod_uses_external_s3(overlay: tuple[str, str, list[Doc]]) -> None:
    name, _, docs = overlay
    config = data_of(docs, "tunelab-config")
    if name == "dev":
        assert config["TUNELAB_S3_ENDPOINT"] == "minio:9000" and config["TUNELAB_S3_SECURE"] == "false"
        assert one(docs, "Job", "minio-bucket-init") and one(docs, "Deployment", "prometheus")
        root = one(docs, "Deployment", "minio")["spec"]["template"]["spec"]["containers"][0]["env"]
        assert all(e["valueFrom"]["secretKeyRef"]["name"].startswith("minio-root-") for e in root)
        prom = yaml.safe_load(data_of(docs, "prometheus-config")["prometheus.yml"])
        jobs = {j["job_name"] for j in prom["scrape_configs"]}
        assert jobs == {"tunelab", "http"}
    else:
        assert not find(docs, "Deployment", "minio") and config["TUNELAB_S3_SECURE"] == "true"
        assert config["TUNELAB_STORE_URL"].startswith("s3://")


def test_prod_namespace_enforces_the_restricted_pod_security_profile(
    overlay: tuple[str, str, list[Doc]],
) -> None:
    name, _, docs = overlay
    if name.startswith("prod"):
        labels = one(docs, "Namespace", "tunelab")["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_gateway_data_layout_is_made_by_its_user_before_the_nested_models_mount(
    overlay: tuple[str, str, list[Doc]],
) -> None:
    """The models volume is mounted inside the data volume; a runtime creates the mount point's
    parent (gateway/) as root unless something made it first as the gateway's user."""
    docs = overlay[2]
    pod = one(docs, "Deployment", "gateway")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container(docs, "gateway")["volumeMounts"]}
    assert mounts["models"].startswith(mounts["data"] + "/")
    (init,) = pod["initContainers"]
    assert init["image"] == container(docs, "gateway")["image"]
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]} == {"data": mounts["data"]}
    assert mounts["models"] in " ".join(init["command"])
    assert init["securityContext"]["readOnlyRootFilesystem"] and "runAsUser" not in init["securityContext"]
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["fsGroup"] == 10001


def test_dev_prometheus_counts_the_gateways_series_once(overlay: tuple[str, str, list[Doc]]) -> None:
    """The gateway's front door (/metrics on http) serves the registry its metrics port does: the
    http job keeps only its `up`, so no gateway series is scraped twice."""
    name, _, docs = overlay
    if name != "dev":
        return
    prom = yaml.safe_load(data_of(docs, "prometheus-config")["prometheus.yml"])
    http = next(j for j in prom["scrape_configs"] if j["job_name"] == "http")
    drops = [r for r in http.get("metric_relabel_configs", []) if r["action"] == "drop"]
    assert any(r["source_labels"] == ["service", "__name__"] and r["regex"] == "gateway;.+" for r in drops)


def test_replicas_run_on_postgres_with_scratch_of_their_own(overlay: tuple[str, str, list[Doc]]) -> None:
    """Two replicas share state only through Postgres: its URL is required where they run, and no
    two pods mount one ReadWriteOnce volume. The gateway (engines in-process) stays at one."""
    name, _, docs = overlay
    for d in find(docs, "Deployment"):
        pod, replicas = d["spec"]["template"]["spec"], d["spec"].get("replicas", 1)
        state = [e for c in pod["containers"] for e in c.get("env", []) if e["name"] == "TUNELAB_STATE_URL"]
        if replicas > 1:
            assert d["metadata"]["name"] in ("datasets", "environments", "trainer"), name
            assert state and all(not e["valueFrom"]["secretKeyRef"].get("optional", False) for e in state)
            assert d["spec"]["strategy"]["type"] == "RollingUpdate"
            claims = [v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
                      if "persistentVolumeClaim" in v]  # fmt: skip
            rwo = {p["metadata"]["name"] for p in find(docs, "PersistentVolumeClaim")
                   if "ReadWriteMany" not in p["spec"].get("accessModes", [])}  # fmt: skip
            assert not set(claims) & rwo, (d["metadata"]["name"], claims)
    if name == "prod-replicas":
        counts = {d["metadata"]["name"]: d["spec"].get("replicas", 1) for d in find(docs, "Deployment")}
        assert counts["trainer"] == counts["datasets"] == counts["environments"] == 2
        assert counts["gateway"] == 1
