"""Starting the pieces: the upstream (vLLM's OpenAI server, or tunelab's embedded engine, which speaks
the same API), the gateway (``python -m tunelab.gateway``), and the deployment, created through the
gateway's own gRPC API with the CLI's client, so the gateway loads the adapter into the upstream
(``/v1/load_lora_adapter``) as it does for any user.
"""

from __future__ import annotations

import os
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import Processes, wait_http

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(*services: str, **extra: str) -> dict[str, str]:
    """This process's environment with the named services' source on PYTHONPATH (first)."""
    paths = [str(REPO / "services" / s) for s in services]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


@dataclass(frozen=True)
class CpuSets:
    """Disjoint CPUs for the upstream, the gateway and the load client, as separate containers with
    CPU limits would have them: neither the gateway nor the client then takes CPU from vLLM's
    CPU-bound scheduler and API server, on either side of the comparison."""

    upstream: frozenset[int]
    gateway: frozenset[int]
    client: frozenset[int]

    @classmethod
    def split(cls, cpus: set[int], gateway: int = 2, client: int = 1) -> CpuSets | None:
        """The last CPUs to the client and the gateway, the rest to the upstream; None when fewer
        than 8 CPUs leave too few to split."""
        ordered = sorted(cpus)
        if len(ordered) < 8:
            return None
        rest, client_cpus = ordered[:-client], ordered[-client:]
        return cls(frozenset(rest[:-gateway]), frozenset(rest[-gateway:]), frozenset(client_cpus))

    def describe(self) -> dict[str, list[int]]:
        return {k: sorted(getattr(self, k)) for k in ("upstream", "gateway", "client")}


@dataclass
class Upstream:
    kind: str  # "vllm" or "embedded"
    url: str
    started_s: float


def start_upstream(
    procs: Processes,
    args: Any,
    python: str,
    base: Path,
    name: str,
    logs: Path,
    cpus: frozenset[int] | None = None,
    adapter_root: Path | None = None,
) -> Upstream:
    """The upstream server; the embedded engine loads runtime adapters from ``adapter_root`` only."""
    port = free_port()
    if args.engine == "vllm":
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base)]
        cmd += ["--served-model-name", name, "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--enable-lora", "--max-lora-rank", str(args.max_lora_rank), "--max-loras", "2"]
        cmd += ["--dtype", "bfloat16", "--max-model-len", str(args.max_model_len)]
        cmd += ["--gpu-memory-utilization", str(args.gpu_memory_utilization), "--disable-uvicorn-access-log"]
        cmd += ["--max-num-seqs", str(args.max_num_seqs)]
        if args.enforce_eager:
            cmd.append("--enforce-eager")
        cmd += shlex.split(args.vllm_args)
        env = child_env(
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # FlashInfer is not in the wheel bundle
        timeout = args.upstream_timeout
    else:
        cmd = [python, "-m", "tunelab.engine", "--model", str(base), "--served-model-name", name]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--max-batch-size", "16"]
        if adapter_root is not None:
            cmd += ["--adapter-root", str(adapter_root)]
        env = child_env("common", "engine")
        timeout = min(args.upstream_timeout, 300)
    proc = procs.start(args.engine, cmd, env, logs / "upstream.log", cpus=cpus)
    url = f"http://127.0.0.1:{port}"
    return Upstream(args.engine, url, wait_http(proc, f"{url}/health", timeout))


@dataclass
class GatewayProc:
    http_url: str
    grpc_addr: str
    started_s: float


def wait_port(proc: Any, port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or not proc.alive():
                raise proc.fail(f"port {port} did not open") from None
            time.sleep(0.2)


def vllm_command_shim(python: str, bin_dir: Path) -> Path:
    """``bin_dir/vllm``: the console script a pip install of vLLM writes, for a bundle unpacked
    without its scripts (the workload runs ``vllm serve`` from PATH, as on any GPU box)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "vllm"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(python)} -m vllm.entrypoints.cli.main "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def start_trainer(procs: Processes, python: str, work: Path, logs: Path, path_first: Path) -> str:
    """The trainer with its local executor (GPUs from NVML); its agents are ``tunelab agent`` run by
    ``python``, and the jobs find ``path_first`` first on PATH. Returns its gRPC address."""
    port = free_port()
    agent = [python, "-c", "from tunelab.cli.main import main; main()", "agent"]
    env = child_env(
        "common",
        "cli",
        "trainer",
        "datasets",
        "environments",
        TUNELAB_DATA_DIR=str(work / "trainer-data"),
        TUNELAB_PORT=str(port),
        TUNELAB_METRICS_PORT="0",
        TUNELAB_AGENT_COMMAND=shlex.join(agent),
        TUNELAB_LOG_LEVEL="info",
    )
    env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', os.defpath)}"
    proc = procs.start("trainer", [python, "-m", "tunelab.trainer"], env, logs / "trainer.log")
    wait_port(proc, port, 120)
    return f"127.0.0.1:{port}"


def start_gateway(
    procs: Processes,
    python: str,
    work: Path,
    logs: Path,
    cpus: frozenset[int] | None = None,
    trainer_addr: str = "",
) -> GatewayProc:
    http_port, grpc_port = free_port(), free_port()
    env = child_env(
        "common",
        "gateway",
        TUNELAB_TRAINER_ADDR=trainer_addr,
        TUNELAB_DATA_DIR=str(work / "gateway-data"),
        TUNELAB_HTTP_PORT=str(http_port),
        TUNELAB_PORT=str(grpc_port),
        TUNELAB_METRICS_PORT="0",
        TUNELAB_API_KEY_AUTH="off",
        TUNELAB_GPU_POLL_INTERVAL_S="1",  # NVML in a background thread; fresher values under load
        TUNELAB_LOG_LEVEL="info",
    )
    proc = procs.start("gateway", [python, "-m", "tunelab.gateway"], env, logs / "gateway.log", cpus=cpus)
    url = f"http://127.0.0.1:{http_port}"
    seconds = wait_http(proc, f"{url}/healthz", 120)
    wait_port(proc, grpc_port)  # gRPC serves once the HTTP side is up; make sure before deploying
    return GatewayProc(url, f"127.0.0.1:{grpc_port}", seconds)


def deploy(
    gw: GatewayProc,
    deployment_id: str,
    model: str,
    base: Path,
    adapter_name: str,
    adapter: Path,
    upstream: str,
    workload: str = "",
    workload_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Creates the deployment (base + adapter on the upstream) and waits until it is loaded. With
    ``workload`` ("vllm" or "engine") the gateway has the trainer run that server (vLLM on one GPU),
    with ``workload_args`` added to its command line, instead of routing to ``upstream``."""
    from tunelab.cli.clients.gateway import GatewayClient, model_source
    from tunelab.common.grpc.channel import open_channel
    from tunelab.gateway.v1 import gateway_pb2 as pb

    channel = open_channel(gw.grpc_addr)
    try:
        client = GatewayClient(channel, gw.http_url)
        started = time.monotonic()
        spec = pb.Deployment(
            model_name=model,
            base_model=model_source(str(base.resolve())),
            adapters=[pb.LoraAdapter(name=adapter_name, source=model_source(str(adapter.resolve())))],
            upstream=pb.Upstream(vllm=pb.VllmUpstream(base_urls=[upstream])),
        )
        if workload:
            runtime = (
                pb.WorkloadUpstream.RUNTIME_VLLM if workload == "vllm" else pb.WorkloadUpstream.RUNTIME_ENGINE
            )
            up = pb.WorkloadUpstream(
                runtime=runtime, gpu_count=1 if workload == "vllm" else 0, args=list(workload_args)
            )
            spec.upstream.CopyFrom(pb.Upstream(workload=up))
        client.deploy(deployment_id, spec)
        d = client.wait_loaded(deployment_id)
        return {
            "state": pb.Deployment.State.Name(d.state),
            "error": d.error,
            "served_model_names": list(d.served_model_names),
            "replica_models": [list(r.models) for r in d.replica_statuses],
            "replica_urls": [r.url for r in d.replica_statuses],
            "replica_jobs": [r.job for r in d.replica_statuses],
            "seconds": round(time.monotonic() - started, 2),
        }
    finally:
        channel.close()
