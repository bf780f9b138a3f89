"""What a workload replica runs: the runtime's command line (``vllm serve``, or the embedded engine)
and the trainer JobSpec around it, with the base model and each adapter mounted read-only.

Dataset-backed weights are mounted into the job's working directory, the base at ``base/`` and
each adapter at ``adapters/NAME/``, and the command names them relative to it (``./base``): the
command runs in the working directory, which the trainer chooses per executor (a directory of its
own on the local executor, a volume in the pod on Kubernetes), so no path on the host is assumed.
A ``path`` source is passed through as it is: a model id vLLM fetches itself, or a directory the
workload can read.

Pure functions over a checked DeploymentSpec, so the tests read the command lines directly.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

from tunelab.gateway.engines import ENGINE_API_KEY_ENV
from tunelab.gateway.specs import DeploymentSpec, ModelSource
from tunelab.trainer.v1 import trainer_pb2 as pb

BASE_MOUNT = "base"
ADAPTERS_MOUNT = "adapters"
# The values vLLM accepts for --max-lora-rank; the adapters' largest rank is rounded up to one.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256)
DEFAULT_LORA_RANK = 64  # without an adapter whose rank is known: room for adapters loaded later
DEFAULT_PRIORITY_CLASS = "high"  # serving outranks training
# Labels on every replica job: the gateway finds its jobs by them (on delete, after a restart).
OWNER_LABEL = "tunelab.dev/gateway"
DEPLOYMENT_LABEL = "tunelab.dev/deployment"
REPLICA_LABEL = "tunelab.dev/replica"
SPEC_LABEL = "tunelab.dev/spec"  # digest of the rest of the spec: an unchanged job is reused


@dataclass(frozen=True)
class ServedFiles:
    """The weights as the server process sees them, and the mounts that put them there."""

    base: str
    adapters: dict[str, str]
    mounts: tuple[pb.DatasetMount, ...]


def _place(source: ModelSource, mount: str, mounts: list[pb.DatasetMount]) -> str:
    if source.path:
        return posixpath.join(source.path, source.subpath) if source.subpath else source.path
    dataset = source.resolved_version or source.dataset_version
    mounts.append(pb.DatasetMount(dataset=dataset, path=mount, mode=pb.DatasetMount.MODE_INPUT))
    return "./" + posixpath.join(mount, source.subpath) if source.subpath else f"./{mount}"


def served_files(spec: DeploymentSpec) -> ServedFiles:
    mounts: list[pb.DatasetMount] = []
    base = _place(spec.base, BASE_MOUNT, mounts)
    adapters = {a.name: _place(a.source, f"{ADAPTERS_MOUNT}/{a.name}", mounts) for a in spec.adapters}
    return ServedFiles(base, adapters, tuple(mounts))


def max_lora_rank(ranks: list[int]) -> int:
    """The adapters' largest rank rounded up to a value vLLM accepts (above 256: as it is, for the
    vLLM to judge); DEFAULT_LORA_RANK when no rank is known."""
    top = max(ranks, default=0)
    if top <= 0:
        return DEFAULT_LORA_RANK
    return next((r for r in VLLM_LORA_RANKS if r >= top), top)


def gpus_of(spec: DeploymentSpec) -> int:
    up = spec.upstream
    return max(1, up.gpu_count) if up.runtime == "vllm" else up.gpu_count


def vllm_command(spec: DeploymentSpec, files: ServedFiles, rank: int) -> list[str]:
    """``vllm serve`` with LoRA enabled and every served name; the adapters listed at start, and
    runtime loading on (the env) for adapters a restarted replica lacks."""
    cmd = ["vllm", "serve", files.base, "--host", "0.0.0.0", "--port", "$PORT"]
    cmd += ["--served-model-name", spec.model_name, "--enable-lora", "--max-lora-rank", str(rank)]
    cmd += ["--max-loras", str(max(1, len(files.adapters)))]
    if files.adapters:
        cmd += ["--lora-modules", *(f"{name}={path}" for name, path in files.adapters.items())]
    cmd += ["--tensor-parallel-size", str(gpus_of(spec))]
    if spec.upstream.trust_remote_code:
        cmd.append("--trust-remote-code")
    return cmd + list(spec.upstream.args)


def engine_command(spec: DeploymentSpec, files: ServedFiles) -> list[str]:
    """The embedded engine (``python -m tunelab.engine``: the environment's Python, or the image's),
    loading adapters at runtime only from where this deployment's adapters are."""
    cmd = ["python", "-m", "tunelab.engine", "--model", files.base, "--served-model-name", spec.model_name]
    cmd += ["--host", "0.0.0.0", "--port", "$PORT"]
    if files.adapters:
        cmd += ["--lora-modules", *(f"{name}={path}" for name, path in files.adapters.items())]
    roots = [f"./{ADAPTERS_MOUNT}"] if any(not a.source.path for a in spec.adapters) else []
    roots += [files.adapters[a.name] for a in spec.adapters if a.source.path]
    for root in roots:
        cmd += ["--adapter-root", root]
    if spec.upstream.trust_remote_code:
        cmd.append("--trust-remote-code")
    return cmd + list(spec.upstream.args)


def job_id(deployment_id: str, index: int) -> str:
    """``dep-<deployment>-<replica>``; a long deployment id is cut and made unique by a digest."""
    ident = f"dep-{deployment_id}-{index}"
    if len(ident) <= 63:
        return ident
    digest = hashlib.sha256(deployment_id.encode()).hexdigest()[:8]
    keep = 63 - len(f"dep--{digest}-{index}")
    return f"dep-{deployment_id[:keep].rstrip('-')}-{digest}-{index}"


def server_env(spec: DeploymentSpec, api_key: str) -> dict[str, str]:
    """The server's environment: vLLM's runtime adapter loading, and the key it requires
    (``VLLM_API_KEY``, or the engine's ``TUNELAB_ENGINE_API_KEY``; none when ``api_key`` is empty)."""
    if spec.upstream.runtime == "vllm":
        return {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **({"VLLM_API_KEY": api_key} if api_key else {})}
    return {ENGINE_API_KEY_ENV: api_key} if api_key else {}


def job_spec(
    spec: DeploymentSpec, index: int, owner: str, rank: int = DEFAULT_LORA_RANK, api_key: str = ""
) -> pb.JobSpec:
    """The server job of replica ``index`` of a workload deployment (sources already resolved);
    ``api_key``: what the server requires of its callers (the gateway's key for the deployment)."""
    up = spec.upstream
    files = served_files(spec)
    vllm = up.runtime == "vllm"
    job = pb.JobSpec(
        display_name=job_id(spec.id, index),
        workload=pb.WORKLOAD_SERVER,
        image=up.image,
        priority_class=up.priority_class or DEFAULT_PRIORITY_CLASS,
        resources=pb.Resources(
            gpu_count=gpus_of(spec), cpu_millis=up.cpu_millis, memory_bytes=up.memory_bytes
        ),
        queue=up.queue,
        datasets=files.mounts,
        environment=up.environment,
        labels={OWNER_LABEL: owner, DEPLOYMENT_LABEL: spec.id, REPLICA_LABEL: str(index)},
        command=vllm_command(spec, files, rank) if vllm else engine_command(spec, files),
        env_vars=server_env(spec, api_key),
    )
    job.labels[SPEC_LABEL] = hashlib.sha256(job.SerializeToString(deterministic=True)).hexdigest()[:16]
    return job
