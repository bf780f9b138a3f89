"""``tunelab job submit`` flags → a JobSpec (the flags of the seed's ``baizectl job submit``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from tunelab.trainer.v1 import trainer_pb2 as pb

BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$")
POLICIES = {"never": "NEVER", "on-failure": "ON_FAILURE", "onfailure": "ON_FAILURE", "always": "ALWAYS"}
INT32 = (-(2**31), 2**31 - 1)


def _bad(message: str, flag: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{flag}'")


def int32(value: int, flag: str) -> int:
    """``value`` when it fits the int32 field it goes to; a usage error naming ``flag`` if not."""
    low, high = INT32
    if not low <= value <= high:
        raise _bad(f"{value} is out of range: use {low} to {high} (int32)", flag)
    return value


def job_id(name: str) -> str:
    """``--name`` → the job id: ``FineTune-ChatGLM3`` is ``finetune-chatglm3``; "" lets the
    trainer generate one. A name invalid after folding is refused with what to write instead."""
    from tunelab.common.errors import InvalidArgument
    from tunelab.common.names import check_id

    if not name:
        return ""
    try:
        return check_id(name, "job")
    except InvalidArgument as exc:
        raise _bad(exc.message, "--name") from None


def cpu_millis(text: str, flag: str = "--resources") -> int:
    """``8`` → 8000, ``500m`` → 500, ``0.5`` → 500 (Kubernetes CPU quantities)."""
    m = QUANTITY.match(text.strip())
    if not m or m.group(2) not in ("", "m"):
        raise _bad(f"cpu={text!r} is not a CPU quantity (e.g. 8, 0.5, 500m)", flag)
    value = float(m.group(1))
    return int(value if m.group(2) == "m" else value * 1000)


def memory_bytes(text: str, flag: str = "--resources") -> int:
    """``16Gi`` → 17179869184, ``512M`` → 512000000, ``1024`` → 1024 (Kubernetes quantities)."""
    m = QUANTITY.match(text.strip())
    unit = m.group(2) if m else "?"
    if not m or (unit and unit not in BINARY and unit not in DECIMAL):
        raise _bad(f"memory={text!r} is not a memory quantity (e.g. 16Gi, 512Mi, 8G)", flag)
    return int(float(m.group(1)) * (BINARY.get(unit) or DECIMAL.get(unit) or 1))


def parse_resources(values: list[str], flag: str = "--resources") -> pb.Resources:
    """``cpu=8,memory=16Gi,nvidia.com/gpu=1`` (repeatable, comma-separated)."""
    from tunelab.trainer.v1 import trainer_pb2 as pb

    res = pb.Resources()
    for item in (part.strip() for value in values for part in value.split(",") if part.strip()):
        key, eq, value = item.partition("=")
        if not eq or not value:
            raise _bad(f"{item!r} is not NAME=QUANTITY, e.g. cpu=8,memory=16Gi,nvidia.com/gpu=1", flag)
        if key == "cpu":
            res.cpu_millis = cpu_millis(value, flag)
        elif key == "memory":
            res.memory_bytes = memory_bytes(value, flag)
        elif key in ("nvidia.com/gpu", "gpu"):
            if not value.isdigit():
                raise _bad(f"{key}={value!r}: GPUs are whole numbers", flag)
            res.gpu_count = int(value)
        else:
            res.other[key] = value
    return res


MOUNT_MODES = {"ro": "MODE_INPUT", "rw": "MODE_OUTPUT"}


def split_mount(text: str) -> tuple[str, str, str]:
    """``NAME[@VERSION]:PATH[:ro|:rw]`` → (ref, path, mode suffix or "")."""
    ref, _, rest = text.partition(":")
    path, sep, mode = rest.rpartition(":")
    if sep and mode in MOUNT_MODES:
        return ref, path, mode
    return ref, rest, ""


def parse_mount(text: str) -> pb.DatasetMount:
    """``NAME[@VERSION]:PATH[:ro|:rw]`` → a mount of datasets/NAME (its latest READY version, or
    VERSION); NAME is read without regard to case (``AdvertiseGen`` is the dataset
    ``advertisegen``). Without a mode an ``empty``-source dataset is an output, any other an input;
    ``:ro`` mounts the latest version of an output dataset (an imported model) read-only."""
    from tunelab.common.errors import InvalidArgument
    from tunelab.common.names import parse_version, resource_name
    from tunelab.trainer.v1 import trainer_pb2 as pb

    ref, path, mode = split_mount(text)
    if ":" not in text or not ref.partition("@")[0] or not path:
        raise _bad(
            f"{text!r} is not NAME[@VERSION]:PATH[:ro|:rw], e.g. advertisegen:data/AdvertiseGen", "--datasets"
        )
    try:
        dataset = resource_name("datasets", *parse_version(ref, "datasets", "dataset"))
    except InvalidArgument as exc:
        raise _bad(f"{text!r}: {exc.message}", "--datasets") from None
    mount = pb.DatasetMount(dataset=dataset, path=path)
    if mode:
        mount.mode = getattr(pb.DatasetMount, MOUNT_MODES[mode])
    return mount


def parse_pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in (part for value in values for part in value.split(",") if part):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise _bad(f"{item!r} is not KEY=VALUE", flag)
        out[key.strip()] = value
    return out


@dataclass
class SubmitFlags:
    name: str = ""
    job_type: str = "PYTORCH"
    image: str = ""
    priority: str = ""
    resources: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    workers: int = 1
    queue: str = ""
    working_dir: str = ""
    datasets: list[str] = field(default_factory=list)
    env: str = ""
    env_vars: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    annotations: list[str] = field(default_factory=list)
    restart_policy: str = "on-failure"
    backoff_limit: int | None = None
    max_run_duration_s: float = 0
    output_commit_interval_s: float = 0
    cancel_grace_s: float | None = None
    shm_size_mib: int = 0
    command: list[str] = field(default_factory=list)
    server: bool = False
    port: int = 0


def build_spec(f: SubmitFlags) -> pb.JobSpec:
    from tunelab.trainer.v1 import trainer_pb2 as pb

    kind = f.job_type.strip().upper().removeprefix("JOB_TYPE_")
    if kind not in ("PYTORCH", "TENSORFLOW", "PADDLE"):
        raise _bad(f"{f.job_type!r}: use PYTORCH (TENSORFLOW and PADDLE are not supported yet)", "--type")
    policy = POLICIES.get(f.restart_policy.strip().lower())
    if policy is None:
        raise _bad(f"{f.restart_policy!r}: use never, on-failure or always", "--restart-policy")
    if not f.command:
        raise typer.BadParameter("give the command after `--`, e.g. -- python train.py", param_hint="COMMAND")
    if f.port and not f.server:
        raise _bad(f"{f.port}: a port is for a server; add --server", "--port")
    spec = pb.JobSpec(
        display_name=f.name,
        type=getattr(pb, f"JOB_TYPE_{kind}"),
        image=f.image,
        workers=int32(f.workers, "--workers"),
        queue=f"queues/{f.queue}" if f.queue and not f.queue.startswith("queues/") else f.queue,
        working_dir=f.working_dir,
        datasets=[parse_mount(d) for d in f.datasets],
        environment=f"environments/{f.env}" if f.env and not f.env.startswith("environments/") else f.env,
        labels=parse_pairs(f.labels, "--labels"),
        annotations=parse_pairs(f.annotations, "--annotations"),
        restart_policy=getattr(pb, f"RESTART_POLICY_{policy}"),
        command=f.command,
        env_vars=parse_pairs(f.env_vars, "--envs"),
        shm_size_bytes=f.shm_size_mib * 2**20,
        workload=pb.WORKLOAD_SERVER if f.server else pb.WORKLOAD_BATCH,
        port=int32(f.port, "--port"),
    )
    if f.priority.strip().lstrip("-").isdigit():
        spec.priority = int32(int(f.priority), "--priority")
    else:
        spec.priority_class = f.priority
    spec.resources.CopyFrom(parse_resources(f.resources))
    if f.requests:
        spec.requests.CopyFrom(parse_resources(f.requests, "--requests-resources"))
    if f.backoff_limit is not None:
        spec.backoff_limit = int32(f.backoff_limit, "--backoff-limit")
    if f.max_run_duration_s:
        spec.max_run_duration.FromNanoseconds(int(f.max_run_duration_s * 1e9))
    if f.output_commit_interval_s:
        spec.output_commit_interval.FromNanoseconds(int(f.output_commit_interval_s * 1e9))
    if f.cancel_grace_s is not None:
        spec.cancel_grace_period.SetInParent()  # 0 is a value here: SIGKILL at once
        spec.cancel_grace_period.FromNanoseconds(int(f.cancel_grace_s * 1e9))
    return spec


CONTEXT_DATASETS = "TUNELAB_DATASETS"


def context_datasets(explicit: list[str], environ: dict[str, str]) -> list[str]:
    """The mounts of the notebook a job is submitted from (``TUNELAB_DATASETS``: ``NAME[@V]:PATH``
    entries separated by spaces or commas), except where ``--datasets`` mounts something at the
    same path: a job submitted from a notebook sees the files the notebook sees."""
    taken = {split_mount(text)[1].rstrip("/") for text in explicit}
    found = []
    for entry in environ.get(CONTEXT_DATASETS, "").replace(",", " ").split():
        if ":" not in entry:
            raise _bad(f"{entry!r} is not NAME[@VERSION]:PATH", CONTEXT_DATASETS)
        if split_mount(entry)[1].rstrip("/") not in taken:
            found.append(entry)
    return found
