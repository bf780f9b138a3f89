"""``tunelab model deploy`` flags → the deployment's upstream: who starts the server.

- the embedded engine, started by the gateway (``--runtime engine``, the default);
- a server the trainer runs as a job per replica (``--runtime vllm``, or ``--runtime engine
  --workload``), with the resources and scheduling flags of ``tunelab job submit``;
- vLLM servers started elsewhere (``--vllm URL``, repeatable; implies vLLM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from tunelab.cli.commands.jobspec import cpu_millis, memory_bytes, parse_resources

if TYPE_CHECKING:
    from tunelab.gateway.v1 import gateway_pb2 as pb

RUNTIMES = ("engine", "vllm")


@dataclass
class UpstreamFlags:
    runtime: str = ""  # engine, or vllm with --vllm
    workload: bool = False
    vllm: list[str] = field(default_factory=list)
    vllm_api_key: str = ""
    device: str = ""
    trust_remote_code: bool = False
    gpus: int | None = None
    cpu: str = ""
    memory: str = ""
    resources: list[str] = field(default_factory=list)
    env: str = ""
    image: str = ""
    queue: str = ""
    priority: str = ""
    runtime_args: list[str] = field(default_factory=list)

    def workload_flags(self) -> list[str]:
        """The workload-only flags given (for the message when they do not apply)."""
        given = {
            "--gpus": self.gpus is not None,
            "--cpu": bool(self.cpu),
            "--memory": bool(self.memory),
            "--resources": bool(self.resources),
            "--env": bool(self.env),
            "--image": bool(self.image),
            "--queue": bool(self.queue),
            "--priority": bool(self.priority),
            "--runtime-arg": bool(self.runtime_args),
        }
        return [flag for flag, on in given.items() if on]


def _bad(message: str, flag: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{flag}'")


def build_upstream(f: UpstreamFlags) -> pb.Upstream:
    from tunelab.gateway.v1 import gateway_pb2 as pb

    runtime = (f.runtime or ("vllm" if f.vllm else "engine")).strip().lower()
    if runtime not in RUNTIMES:
        raise _bad(f"{f.runtime!r}: use engine or vllm", "--runtime")
    if f.vllm:
        if runtime != "vllm":
            raise _bad("--vllm points at vLLM servers: leave --runtime out, or say vllm", "--runtime")
        if f.workload or f.workload_flags():
            extra = ", ".join((["--workload"] if f.workload else []) + f.workload_flags())
            raise _bad(
                f"{extra} apply to servers the trainer starts; --vllm points at servers already running "
                "(drop --vllm to have the trainer run vLLM: --runtime vllm)",
                "--vllm",
            )
        if f.trust_remote_code:
            raise _bad(
                "it is for servers tunelab starts; a vLLM server runs remote code only when it was started "
                "with vLLM's own --trust-remote-code",
                "--trust-remote-code",
            )
        return pb.Upstream(vllm=pb.VllmUpstream(base_urls=f.vllm, api_key=f.vllm_api_key))
    if runtime == "engine" and not f.workload:
        if f.workload_flags():
            raise _bad(
                f"{', '.join(f.workload_flags())} apply to servers the trainer runs: add --workload to run "
                "the engine as a trainer job (or --runtime vllm)",
                f.workload_flags()[0],
            )
        return pb.Upstream(
            embedded=pb.EmbeddedUpstream(device=f.device, trust_remote_code=f.trust_remote_code)
        )
    if f.device:
        raise _bad(
            "it is for the engine the gateway starts; a trainer job gets its GPUs from --gpus", "--device"
        )
    return pb.Upstream(workload=workload(f, runtime))


def workload(f: UpstreamFlags, runtime: str) -> pb.WorkloadUpstream:
    from tunelab.gateway.v1 import gateway_pb2 as pb

    res = parse_resources(f.resources)
    if res.other:
        raise _bad(
            f"{', '.join(sorted(res.other))}: a served model takes cpu, memory and nvidia.com/gpu only",
            "--resources",
        )
    if f.cpu:
        res.cpu_millis = cpu_millis(f.cpu, "--cpu")
    if f.memory:
        res.memory_bytes = memory_bytes(f.memory, "--memory")
    if f.gpus is not None:
        if f.gpus < 0:
            raise _bad(f"{f.gpus}: GPUs are 0 or more", "--gpus")
        res.gpu_count = f.gpus
    return pb.WorkloadUpstream(
        runtime=pb.WorkloadUpstream.RUNTIME_VLLM if runtime == "vllm" else pb.WorkloadUpstream.RUNTIME_ENGINE,
        gpu_count=res.gpu_count,
        cpu_millis=res.cpu_millis,
        memory_bytes=res.memory_bytes,
        environment=f.env,
        image=f.image,
        queue=f.queue,
        priority_class=f.priority,
        args=f.runtime_args,
        trust_remote_code=f.trust_remote_code,
    )
