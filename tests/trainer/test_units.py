"""Fast tests of the pieces: admission order and quotas, spec checks, flag parsing, the agent's
mount placement, output snapshots and metric lines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer

from tunelab.cli.agent.command import CommandNotFound, build_argv, resolve
from tunelab.cli.agent.mounts import MountError, nested, place, relative, snapshot
from tunelab.cli.agent.mounts import plan as plan_mounts
from tunelab.cli.agent.recipemetrics import failure_reason, parse_event, to_point
from tunelab.cli.commands.jobspec import SubmitFlags, build_spec, cpu_millis, memory_bytes, parse_mount
from tunelab.common.errors import InvalidArgument, Unimplemented
from tunelab.trainer.records import QUEUED, Demand, JobRecord, QueueRecord
from tunelab.trainer.scheduler import QueueUsage, never_fits, plan
from tunelab.trainer.settings import DEFAULT_PRIORITY_CLASSES
from tunelab.trainer.v1 import trainer_pb2 as pb
from tunelab.trainer.validation import Defaults, normalize

DEFAULTS = Defaults(Path("/srv/work"), DEFAULT_PRIORITY_CLASSES, 3)


def job(
    job_id: str, priority: int, t: float, gpus: int = 0, queue: str = "default", **kw: object
) -> JobRecord:
    spec = pb.JobSpec(command=["true"], resources=pb.Resources(gpu_count=gpus))
    return JobRecord(job_id, spec, queue, priority, QUEUED, t, t, **kw)  # type: ignore[arg-type]


def queue(queue_id: str = "default", **quotas: object) -> QueueRecord:
    return QueueRecord(queue_id, 0.0, 0.0, **quotas)  # type: ignore[arg-type]


# -- admission --------------------------------------------------------------------------------
def test_priority_then_submission_time() -> None:
    queued = sorted(
        [job("low", 1000, 1), job("high-late", 100000, 3), job("high", 100000, 2), job("medium", 10000, 0)],
        key=lambda j: (-j.priority, j.create_time),
    )
    p = plan(queued, {"default": queue(max_concurrent_jobs=2)}, {}, [], now=10)
    assert [a.job_id for a in p.admissions] == ["high", "high-late"]
    assert "runs 2 of at most 2 jobs" in p.waiting["medium"]


def test_gpus_are_assigned_and_a_big_job_is_not_starved_in_its_queue() -> None:
    queued = [job("big", 100000, 1, gpus=2), job("small", 1000, 2, gpus=1), job("other", 1000, 3, queue="q2")]
    p = plan(queued, {"default": queue(), "q2": queue("q2")}, {}, ["1"], now=10)
    assert [(a.job_id, a.gpus) for a in p.admissions] == [("other", [])]
    assert p.waiting["big"] == "waiting for 2 GPU(s); 1 free"
    assert "behind a higher-priority or earlier job" in p.waiting["small"]


def test_quotas_count_what_runs_and_backoff_does_not_block() -> None:
    usage = {"default": QueueUsage(Demand(gpus=1), running=1)}
    queued = [job("retrying", 100000, 1, gpus=1, not_before=20.0), job("next", 10, 2, gpus=1)]
    p = plan(queued, {"default": queue(gpu_quota=2)}, usage, ["0", "1"], now=10)
    assert [(a.job_id, a.gpus) for a in p.admissions] == [("next", ["0"])]
    assert p.waiting["retrying"].startswith("retrying in 10s")
    paused = plan([job("j", 1, 1)], {"default": queue(state="PAUSED")}, {}, [], now=0)
    assert not paused.admissions and paused.waiting["j"] == "queue default is paused"


def test_never_fits_says_the_numbers() -> None:
    assert "asks for 4 GPU(s) (2 per worker x 2 workers) but the executor has 2 (TUNELAB_GPUS)" in never_fits(
        Demand(gpus=4), 2, queue(), 2, "TUNELAB_GPUS"
    )
    message = never_fits(Demand(gpus=2), 1, queue(gpu_quota=1), 8, "NVML")
    assert "queue default has a quota of 1" in message and "--gpu-quota 2" in message
    assert never_fits(Demand(gpus=1), 1, queue(gpu_quota=1), 1, "NVML") == ""


# -- spec checks ------------------------------------------------------------------------------
def test_normalize_fills_defaults() -> None:
    spec = normalize(
        "j1", pb.JobSpec(command=["python", "x.py"], priority_class="baize-high-priority"), DEFAULTS
    )
    assert (spec.type, spec.priority_class, spec.priority) == (pb.JOB_TYPE_PYTORCH, "high", 100000)
    assert spec.queue == "queues/default" and spec.working_dir == "/srv/work/j1"
    assert spec.restart_policy == pb.RESTART_POLICY_ON_FAILURE and spec.backoff_limit == 3
    assert normalize("j", pb.JobSpec(command=["x"]), DEFAULTS).priority == 10000  # medium


@pytest.mark.parametrize(
    ("fields", "error", "words"),
    [
        ({"type": pb.JOB_TYPE_TENSORFLOW}, Unimplemented, "TENSORFLOW is not supported yet"),
        ({"command": []}, InvalidArgument, "after `--`"),
        ({"priority_class": "urgent"}, InvalidArgument, "high (100000), medium (10000), low (1000)"),
        ({"working_dir": "relative"}, InvalidArgument, "absolute"),
        ({"datasets": [pb.DatasetMount(dataset="datasets/d", path="../up")]}, InvalidArgument, "outside"),
        ({"datasets": [pb.DatasetMount(dataset="datasets/d", path="/etc/x")]}, InvalidArgument, "outside"),
        (
            {
                "datasets": [
                    pb.DatasetMount(dataset="datasets/a", path="d"),
                    pb.DatasetMount(dataset="datasets/b", path="/srv/w/d/"),
                ]
            },
            InvalidArgument,
            "datasets/a and datasets/b are both at /srv/w/d",
        ),
        ({"env_vars": {"CUDA_VISIBLE_DEVICES": "0"}}, InvalidArgument, "set by the scheduler"),
    ],
)
def test_normalize_refuses(fields: dict[str, object], error: type[Exception], words: str) -> None:
    base: dict[str, object] = {"command": ["python", "x.py"], "working_dir": "/srv/w"}
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        normalize("j1", pb.JobSpec(**{**base, **fields}), DEFAULTS)  # type: ignore[arg-type]


# -- flags ------------------------------------------------------------------------------------
def test_seed_flags_build_the_spec() -> None:
    flags = SubmitFlags(
        name="finetunel-chatglm3",
        image="release.daocloud.io/baize/baize-notebook:v0.5.0",
        priority="baize-high-priority",
        resources=["cpu=8,memory=16Gi,nvidia.com/gpu=1"],
        queue="default",
        working_dir="/home/jovyan/ChatGLM3",
        datasets=["AdvertiseGen:data/AdvertiseGen", "output@3:output"],
        labels=["job_type=pytorch"],
        restart_policy="on-failure",
        backoff_limit=2,
        cancel_grace_s=0,
        command=["python", "finetune_hf.py", "data/AdvertiseGen_fix", "./chatglm3-6b", "configs/lora.yaml"],
    )
    spec = build_spec(flags)
    assert spec.resources == pb.Resources(cpu_millis=8000, memory_bytes=16 * 2**30, gpu_count=1)
    assert [(m.dataset, m.path) for m in spec.datasets] == [
        ("datasets/advertisegen", "data/AdvertiseGen"),  # names are read without regard to case
        ("datasets/output/versions/3", "output"),
    ]
    assert spec.priority_class == "baize-high-priority" and spec.queue == "queues/default"
    assert spec.labels == {"job_type": "pytorch"} and spec.backoff_limit == 2
    assert spec.restart_policy == pb.RESTART_POLICY_ON_FAILURE and spec.type == pb.JOB_TYPE_PYTORCH
    assert spec.HasField("cancel_grace_period") and spec.cancel_grace_period.seconds == 0


def test_quantities() -> None:
    assert [cpu_millis(v) for v in ("8", "0.5", "250m")] == [8000, 500, 250]
    assert [memory_bytes(v) for v in ("16Gi", "512Mi", "1G", "1024")] == [
        16 * 2**30,
        512 * 2**20,
        10**9,
        1024,
    ]
    for bad in ("8x", "lots"):
        with pytest.raises(typer.BadParameter):
            memory_bytes(bad)
    with pytest.raises(typer.BadParameter, match="NAME\\[@VERSION\\]:PATH"):
        parse_mount("no-path")
    with pytest.raises(typer.BadParameter, match="never, on-failure or always"):
        build_spec(SubmitFlags(restart_policy="sometimes", command=["x"]))


# -- the agent --------------------------------------------------------------------------------
def test_mount_paths_stay_inside_the_working_dir(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    inside = [relative("/w", p) for p in ("data/train", ".", "/w", "/w/a/../b")]
    assert inside == ["data/train", ".", ".", "b"]
    for bad in ("../x", "/etc", "/w2"):
        with pytest.raises(MountError, match="outside the working directory"):
            relative("/w", bad)
    assert place(work, "data/train") == work / "data" / "train" and place(work, ".") == work
    (work / "link").symlink_to(tmp_path)  # a link inside pointing outside
    with pytest.raises(MountError, match="outside the working directory"):
        place(work, "link/escaped")


def test_mounts_nest_parents_first() -> None:
    """As a pod's volumes: the code at the working dir, data and output inside it, in any order."""
    spec = pb.JobSpec(
        command=["python", "finetune_hf.py"],
        working_dir="/home/u/ChatGLM3",
        datasets=[
            pb.DatasetMount(
                dataset="datasets/out", path="finetune_demo/output", mode=pb.DatasetMount.MODE_OUTPUT
            ),
            pb.DatasetMount(dataset="datasets/data", path="/home/u/ChatGLM3/finetune_demo/data/AdvertiseGen"),
            pb.DatasetMount(dataset="datasets/code", path="/home/u/ChatGLM3"),
        ],
    )
    normalize("j", spec, DEFAULTS)  # accepted
    mounts = plan_mounts(spec, Path("/stage/tree"))
    assert [m.rel for m in mounts] == [".", "finetune_demo/output", "finetune_demo/data/AdvertiseGen"]
    assert mounts[0].path == Path("/stage/tree") and mounts[2].inside(mounts[0])
    assert nested(mounts[0], mounts) == ["finetune_demo/output", "finetune_demo/data/AdvertiseGen"]
    assert nested(mounts[1], mounts) == [] and len({m.key for m in mounts}) == 3


def test_torchrun_wraps_multi_process_commands(tmp_path: Path) -> None:
    env = {"PET_NPROC_PER_NODE": "2", "PATH": os.environ["PATH"]}
    assert build_argv(["python", "train.py", "-x"], env)[1:] == [
        "-m",
        "torch.distributed.run",
        "train.py",
        "-x",
    ]
    assert build_argv(["bash", "-c", "run"], env)[1:4] == ["-m", "torch.distributed.run", "--no-python"]
    assert build_argv(["torchrun", "train.py"], env) == ["torchrun", "train.py"]
    assert build_argv(["python", "train.py"], {"PET_NPROC_PER_NODE": "1"}) == ["python", "train.py"]
    # several nodes with one process each (a Kubernetes job of N one-GPU pods) still need torchrun
    nodes = {"PET_NPROC_PER_NODE": "1", "PET_NNODES": "2", "PATH": os.environ["PATH"]}
    assert build_argv(["python", "train.py"], nodes)[1:3] == ["-m", "torch.distributed.run"]
    with pytest.raises(CommandNotFound, match="not found on PATH"):
        resolve(["no-such-program-x"], {"PATH": str(tmp_path)}, tmp_path)


def test_snapshot_links_finished_files_only(tmp_path: Path) -> None:
    src, dst = tmp_path / "out", tmp_path / "snap"
    (src / "checkpoint-5").mkdir(parents=True)
    (src / "checkpoint-5" / "adapter.bin").write_bytes(b"a")
    (src / ".tmp-checkpoint-10-1").mkdir()
    (src / ".tmp-checkpoint-10-1" / "adapter.bin").write_bytes(b"half")
    snapshot(src, dst)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        "checkpoint-5/adapter.bin"
    ]
    inode = (dst / "checkpoint-5" / "adapter.bin").stat().st_ino
    (src / "checkpoint-5" / "adapter.bin").unlink()  # rotated away
    (src / "checkpoint-10").mkdir()
    (src / "checkpoint-10" / "adapter.bin").write_bytes(b"b")
    (src / "final.txt").write_text("x")
    snapshot(src, dst)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        "checkpoint-10/adapter.bin",
        "final.txt",
    ]
    assert not (dst / "checkpoint-5").exists()
    assert (dst / "checkpoint-10" / "adapter.bin").stat().st_ino == (
        src / "checkpoint-10" / "adapter.bin"
    ).stat().st_ino
    assert inode != (dst / "checkpoint-10" / "adapter.bin").stat().st_ino


def test_recipe_metric_lines() -> None:
    train = parse_event(
        '{"event": "train", "time": 1.5, "step": 10, "max_steps": 40, "epoch": 0.5, "loss": 2.5, "lr": 0.001,'
        ' "grad_norm": 1.2, "tokens_per_second": 900.0, "gpu_memory_gb": 1.5, "progress": 25.0,'
        ' "eta_seconds": 30.0, "elapsed_seconds": 10.0}'
    )
    assert train is not None
    p = to_point(train)
    assert p is not None and (p.step, p.total_steps, p.loss, p.learning_rate) == (10, 40, 2.5, 0.001)
    assert p.progress == 0.25 and p.gpu_memory_bytes == int(1.5 * 2**30) and p.eta.seconds == 30
    assert p.extra["elapsed_seconds"] == 10.0
    ev = to_point({"event": "eval", "step": 20, "split": "validation", "loss": 2.0, "rouge-1": 31.2})
    assert ev is not None and dict(ev.eval_scores) == {"eval_loss": 2.0, "rouge-1": 31.2}
    test = to_point({"event": "eval", "step": 20, "split": "test", "bleu-4": 8.0})
    assert test is not None and dict(test.eval_scores) == {"test_bleu-4": 8.0}
    assert parse_event("[rank0]: " + '{"event": "checkpoint", "step": 5}') == {
        "event": "checkpoint",
        "step": 5,
    }
    assert parse_event("loss went down") is None and to_point({"event": "start"}) is None
    nan = {"event": "failed", "reason": "the loss became nan at step 3 (learning rate 5)"}
    assert failure_reason(nan, 3) == ("NaNLoss", nan["reason"])
    bad = {"event": "failed", "reason": "x.yaml:3:1: invalid YAML"}
    assert failure_reason(bad, 2) == ("InvalidInput", bad["reason"])
    assert (
        failure_reason(bad, 1) == ("RecipeFailed", bad["reason"])
        and failure_reason({"event": "x"}, 1) is None
    )
