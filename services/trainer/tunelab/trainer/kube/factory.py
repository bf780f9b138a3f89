"""``build_executor(settings, …)``: the Kubernetes executor from the trainer's settings."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping
from pathlib import Path

from tunelab.common.errors import InvalidArgument
from tunelab.trainer.gpus import GpuInfo
from tunelab.trainer.kube.api import KubeApi
from tunelab.trainer.kube.executor import KubernetesExecutor
from tunelab.trainer.kube.manifests import PodConfig
from tunelab.trainer.registry import Registry
from tunelab.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def namespace(settings: TrainerSettings, in_cluster_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    if settings.k8s_namespace:
        return settings.k8s_namespace
    try:
        return in_cluster_file.read_text().strip() or "default"
    except OSError:
        return "default"


def token_secret(value: str) -> tuple[str, str] | None:
    """``NAME`` or ``NAME/KEY`` (TUNELAB_K8S_TOKEN_SECRET); the key defaults to ``auth-token``."""
    if not value:
        return None
    name, _, key = value.partition("/")
    if not name or "/" in key:
        raise InvalidArgument(f"TUNELAB_K8S_TOKEN_SECRET {value!r}: give NAME or NAME/KEY of a Secret")
    return name, key or "auth-token"


def pod_config(settings: TrainerSettings, agent_env: Mapping[str, str], ns: str) -> PodConfig:
    if not settings.k8s_job_image:
        raise InvalidArgument(
            "TUNELAB_K8S_JOB_IMAGE is not set: with TUNELAB_EXECUTOR=kubernetes, set it to the image of "
            "job pods (the job agent `tunelab agent` and the recipes), e.g. ghcr.io/tunelab/job:0.1.0"
        )
    env = dict(agent_env)
    if not settings.agent_trainer_addr:
        env["TUNELAB_TRAINER_ADDR"] = f"trainer.{ns}.svc:{settings.port}"
        log.info(
            "job pods reach the trainer at %s (set TUNELAB_AGENT_TRAINER_ADDR to change)",
            env["TUNELAB_TRAINER_ADDR"],
        )
    secret = token_secret(settings.k8s_token_secret)
    if secret is None and env.get("TUNELAB_TOKEN"):
        log.warning(
            "the auth token is written into every Job; set TUNELAB_K8S_TOKEN_SECRET to read it from a Secret"
        )
    return PodConfig(
        namespace=ns,
        image=settings.k8s_job_image,
        agent_argv=tuple(shlex.split(settings.agent_command) or ["tunelab", "agent"]),
        agent_env=env,
        token_secret=secret,
        service_account=settings.k8s_service_account,
        image_pull_secrets=tuple(s.strip() for s in settings.k8s_image_pull_secrets.split(",") if s.strip()),
        cache_pvc=settings.k8s_cache_pvc,
        run_as=settings.k8s_run_as_user,
        kueue=settings.k8s_kueue,
        ttl_after_finished_s=settings.k8s_ttl_after_finished_s,
        trainjob_runtime=settings.k8s_trainjob_runtime,
        cancel_grace_s=settings.cancel_grace_s,
    )


def build_executor(
    settings: TrainerSettings,
    agent_env: Mapping[str, str],
    registry: Registry,
    api: KubeApi | None = None,
) -> KubernetesExecutor:
    """Job specs come from ``registry``; ``api`` is the cluster's (in-cluster or kubeconfig) unless
    given. TUNELAB_GPUS is the number of cluster GPUs the trainer hands out; Kueue's quota is the
    cluster's own limit on top."""
    ns = namespace(settings)
    cfg = pod_config(settings, agent_env, ns)
    if api is None:
        from tunelab.trainer.kube.client import connect

        api = connect()
    gpus = [GpuInfo(i) for i in range(settings.gpus or 0)]
    if not gpus:
        log.warning(
            "TUNELAB_GPUS is unset or 0: jobs asking for GPUs are refused; set it to the cluster GPUs to use"
        )
    log.info("Kubernetes executor", extra={"namespace": ns, "engine": settings.k8s_engine, "gpus": len(gpus)})
    return KubernetesExecutor(
        api,
        cfg,
        lambda job_id: registry.get_job(job_id).spec,
        settings.k8s_engine,
        gpus,
        settings.cpu_millis,
        settings.memory_bytes,
    )
