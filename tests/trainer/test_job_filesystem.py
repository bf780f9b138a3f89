"""Under the local executor each job has a filesystem view of its own, with mounts as a pod has
them: the seed's nested layout (the code dataset at the working directory, AdvertiseGen and the
output mounted inside it) at absolute paths that exist for the job only; inputs read-only;
outputs committed without the mounts nested in them; no markers in sight; nothing created or left
on this machine (the staging area goes after success, failure, cancel, a killed agent and
`job rm`). Without a private mount namespace only the executor's own working directory is used."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobhelpers import (
    CANCELLED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    log_text,
    py,
    spec,
    wait_for,
    wait_until,
)
from tunelab.datasets.v1 import datasets_pb2 as dpb
from tunelab.trainer.kube import manifests as mf
from tunelab.trainer.v1 import trainer_pb2 as pb

NEVER = pb.RESTART_POLICY_NEVER
OUTPUT = pb.DatasetMount.MODE_OUTPUT

# finetune_demo/probe.py: reports what the job sees, writes a checkpoint, then waits for `go`.
PROBE = """\
import json, os, sys, time
from pathlib import Path

work, go = sys.argv[1], Path(sys.argv[2])
seen = {
    "cwd": os.getcwd(),
    "here": sorted(os.listdir(".")),
    "data": sorted(os.listdir("data/AdvertiseGen")),
    "output": sorted(os.listdir("output")),
    "readme": Path("../README.md").read_text(),
    "train": Path("data/AdvertiseGen/train.json").read_text(),
    "ours": [os.path.join(d, n) for d, ds, fs in os.walk(work) for n in ds + fs if "tunelab" in n],
}
for where in ("data/AdvertiseGen/new.json", "../new.md"):
    try:
        Path(where).write_text("x")
        seen[where] = "writable"
    except OSError as exc:
        seen[where] = exc.strerror
(Path("output") / "checkpoint-1").mkdir()
(Path("output") / "checkpoint-1" / "adapter.txt").write_text("trained")
print("SEEN " + json.dumps(seen), flush=True)
while not go.exists():
    time.sleep(0.05)
"""


def absent_path(top: str = "/home") -> Path:
    """A working directory under ``top`` that does not exist here (nor does its parent)."""
    path = Path(top) / f"tl-{uuid.uuid4().hex[:10]}" / "ChatGLM3"
    assert not path.parent.exists()
    return path


def runs(stack: Any) -> Path:
    return Path(stack.data_dir) / "trainer" / "runs"


def staging_left(stack: Any) -> list[Path]:
    """The attempts' scratch areas still there (their logs stay)."""
    return [p for p in runs(stack).glob("*/attempt-*") if p.is_dir()]


@pytest.fixture
def chatglm3(stack: Any, tmp_path: Path) -> Any:
    """The code dataset (ChatGLM3 with a probe; it holds files where the data and the output will
    be mounted, which the mounts hide), AdvertiseGen and an empty output."""
    datasets = stack.datasets
    upload = dpb.Source(upload=dpb.UploadSource())
    code = tmp_path / "src" / "ChatGLM3"
    demo = code / "finetune_demo"
    (demo / "data" / "AdvertiseGen").mkdir(parents=True)
    (demo / "data" / "AdvertiseGen" / "from-code.txt").write_text("hidden by the mount")
    (demo / "output").mkdir()
    (demo / "output" / "from-code.txt").write_text("hidden by the mount")
    (demo / "probe.py").write_text(PROBE)
    (code / "README.md").write_text("ChatGLM3\n")
    data = tmp_path / "src" / "AdvertiseGen"
    data.mkdir()
    (data / "train.json").write_text('{"content": "a", "summary": "b"}\n')
    datasets.create("chatglm3", upload)
    datasets.push("chatglm3", code)
    datasets.create("advertisegen", upload)
    datasets.push("advertisegen", data)
    datasets.create("output", dpb.Source(empty=dpb.EmptySource()))
    return datasets


def seed_mounts(work: Path) -> list[pb.DatasetMount]:
    return [
        pb.DatasetMount(dataset="datasets/chatglm3", path=str(work)),
        pb.DatasetMount(dataset="datasets/advertisegen", path="finetune_demo/data/AdvertiseGen"),
        pb.DatasetMount(dataset="datasets/output", path=f"{work}/finetune_demo/output"),
    ]


def committed(job: pb.Job, path: str) -> str:
    return next(m.committed_version for m in job.spec.datasets if m.path == path)


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_the_seeds_nested_mounts_exist_for_the_job_only(stack: Any, chatglm3: Any, tmp_path: Path) -> None:
    client = stack.client
    work, go = absent_path(), tmp_path / "go"
    command = ["bash", "-c", f"cd {work}/finetune_demo && python probe.py {work} {go}"]
    job = client.submit(spec(command, working_dir=str(work), datasets=seed_mounts(work)), "seed")
    seen_line = wait_until(
        lambda: next((ln for ln in log_text(client, job.name).splitlines() if ln.startswith("SEEN ")), None),
        what="the probe's report",
    )
    # While it runs, its paths exist for it only; its staging area is the trainer's.
    assert not work.parent.exists()
    assert [p.relative_to(runs(stack)).as_posix() for p in staging_left(stack)] == ["seed/attempt-1"]
    seen = json.loads(seen_line.removeprefix("SEEN "))
    go.touch()
    done = wait_for(client, job.name)
    assert done.state == SUCCEEDED, f"{done.reason}: {done.message}\n{log_text(client, job.name)}"

    assert seen["cwd"] == f"{work}/finetune_demo"
    assert seen["here"] == ["data", "output", "probe.py"]
    assert seen["data"] == ["train.json"] and seen["output"] == []  # the mounts hide the code's files
    assert seen["readme"] == "ChatGLM3\n" and seen["train"].startswith('{"content"')
    assert seen["ours"] == []  # no marker or snapshot in the job's sight
    assert seen["data/AdvertiseGen/new.json"] == seen["../new.md"] == "Read-only file system"

    version = committed(done, f"{work}/finetune_demo/output")
    assert version == "datasets/output/versions/1"
    stack.datasets.pull(version, tmp_path / "pulled")
    assert [f for f in files(tmp_path / "pulled") if "tunelab" not in f] == ["checkpoint-1/adapter.txt"]
    assert not work.parent.exists() and staging_left(stack) == []

    # The same working directory again, with an output at the directory itself and an input
    # nested in it: the commit holds the output's own files, not the input's.
    mounts = [
        pb.DatasetMount(dataset="datasets/output", path=str(work), mode=OUTPUT),
        pb.DatasetMount(dataset="datasets/advertisegen", path="data"),
    ]
    write = py("import os; assert os.listdir('data') == ['train.json']; open('result.txt', 'w').write('r')")
    again = client.submit(spec(write, working_dir=str(work), datasets=mounts), "again")
    done = wait_for(client, again.name)
    assert done.state == SUCCEEDED, f"{done.reason}: {done.message}\n{log_text(client, again.name)}"
    stack.datasets.pull(committed(done, str(work)), tmp_path / "again")
    assert [f for f in files(tmp_path / "again") if "tunelab" not in f] == [
        "checkpoint-1/adapter.txt",  # where the output started (version 1)
        "result.txt",
    ]
    assert not work.parent.exists() and staging_left(stack) == []


def test_a_top_level_working_dir_and_one_that_cannot_be_made(stack: Any, tmp_path: Path) -> None:
    client = stack.client
    stack.datasets.create("out", dpb.Source(empty=dpb.EmptySource()))
    top = absent_path("/")  # its deepest existing ancestor is "/": the job gets a root of its own
    mounts = [pb.DatasetMount(dataset="datasets/out", path="out")]
    write = py("import os; open('out/here.txt', 'w').write(os.getcwd())")
    job = client.submit(spec(write, working_dir=str(top), datasets=mounts, restart_policy=NEVER), "top")
    done = wait_for(client, job.name)
    assert done.state == SUCCEEDED, f"{done.reason}: {done.message}\n{log_text(client, job.name)}"
    stack.datasets.pull(committed(done, "out"), tmp_path / "top")
    assert (tmp_path / "top" / "here.txt").read_text() == str(top)
    assert not top.parent.exists()

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = client.submit(spec(["true"], working_dir=str(blocker / "work")), "unmakeable")
    done = wait_for(client, bad.name)
    assert (done.state, done.reason) == (FAILED, "InvalidMount")
    assert f"cannot make the working directory {blocker}/work" in done.message
    assert "Not a directory" in done.message
    assert staging_left(stack) == []


def test_no_staging_is_left_after_failure_cancel_kill_and_rm(stack: Any, chatglm3: Any) -> None:
    client = stack.client
    work = absent_path()
    mounts = seed_mounts(work)

    failed = client.submit(spec(["false"], working_dir=str(work), datasets=mounts, restart_policy=NEVER), "f")
    assert (wait_for(client, failed.name).state, staging_left(stack)) == (FAILED, [])

    sleeper = py("import time; print('up', flush=True); time.sleep(600)")

    def running(name: str) -> pb.Job:
        job = client.submit(spec(sleeper, working_dir=str(work), datasets=mounts, restart_policy=NEVER), name)
        wait_until(lambda: "up" in log_text(client, job.name).split(), what=f"{name} running")
        assert wait_for(client, job.name, [RUNNING]).state == RUNNING
        assert [p.name for p in staging_left(stack)] == ["attempt-1"]
        return client.get(job.name)

    cancelled = running("c")
    client.cancel(cancelled.name, grace_s=0)
    assert (wait_for(client, cancelled.name).state, staging_left(stack)) == (CANCELLED, [])

    killed = running("k")  # its agent SIGKILLed: the trainer finds the attempt lost, removes its area
    os.kill(int(killed.executor_ref.split(":")[0]), signal.SIGKILL)
    assert wait_for(client, killed.name).state == FAILED
    assert staging_left(stack) == []

    removed = running("r")
    client.delete(removed.name, force=True)
    assert staging_left(stack) == []
    assert not work.parent.exists()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_without_a_mount_namespace_only_the_executors_working_dir_runs(
    make_stack: Any, tmp_path: Path
) -> None:
    """An agent in a user namespace without an id mapping can make no namespace of its own."""
    tunelab = Path(sys.executable).parent / "tunelab"
    stack = make_stack(agent_command=f"unshare --user {tunelab} agent")
    client = stack.client
    stack.datasets.create("out", dpb.Source(empty=dpb.EmptySource()))
    mounts = [pb.DatasetMount(dataset="datasets/out", path="out")]
    write = py("open('out/made.txt', 'w').write('here')")
    default = client.submit(spec(write, datasets=mounts, restart_policy=NEVER), "default")
    done = wait_for(client, default.name)
    assert done.state == SUCCEEDED, f"{done.reason}: {done.message}\n{log_text(client, default.name)}"
    assert "no private mount namespace" in log_text(client, default.name)
    stack.datasets.pull(committed(done, "out"), tmp_path / "made")
    assert (tmp_path / "made" / "made.txt").read_text() == "here"

    work = absent_path()
    chosen = client.submit(spec(["true"], working_dir=str(work), restart_policy=NEVER), "chosen")
    done = wait_for(client, chosen.name)
    assert (done.state, done.reason) == (FAILED, "InvalidMount")
    assert f"the working directory {work} needs a private mount namespace" in done.message
    assert "leave out --working-dir" in done.message
    assert staging_left(stack) == [] and not work.parent.exists()


def test_a_pod_with_nested_mounts_renders(tmp_path: Path) -> None:
    """In a pod the working directory is the tree of the attempt's volume (a subPath)."""
    work = "/home/jovyan/ChatGLM3"
    job_spec = spec(
        ["python", "finetune_hf.py"],
        working_dir=work,
        datasets=[
            pb.DatasetMount(dataset="datasets/chatglm3", path=work),
            pb.DatasetMount(dataset="datasets/advertisegen", path=f"{work}/finetune_demo/data/AdvertiseGen"),
            pb.DatasetMount(dataset="datasets/output", path=f"{work}/finetune_demo/output", mode=OUTPUT),
        ],
    )
    cfg = mf.PodConfig(namespace="ml", image="job:1", kueue=False)
    job = mf.job_manifest(cfg, "seed", 1, job_spec, 1)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[work] == {"name": "attempt", "mountPath": work, "subPath": "tree"}
    assert mounts[mf.ATTEMPT_DIR]["name"] == "attempt"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TUNELAB_AGENT_FILESYSTEM"] == "pod" and env["TUNELAB_AGENT_SCRATCH"] == mf.ATTEMPT_DIR
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [str(validate), "--strict", "-k", "1.30.0", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_pull_keeps_its_marker_where_it_is_told(datasets_service: Any, tmp_path: Path) -> None:
    """The agent's markers lie beside the tree; "already in place" still works with them there."""
    from tunelab.common.storage.materialize import MARKER

    datasets = datasets_service.client
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.json").write_text("{}\n")
    datasets.create("data", dpb.Source(upload=dpb.UploadSource()))
    datasets.push("data", tmp_path / "src")
    target, marker = tmp_path / "tree" / "data", tmp_path / "markers" / "data.json"
    first = datasets.pull("data", target, marker=marker)
    again = datasets.pull("data", target, marker=marker)
    assert (first.unchanged, again.unchanged) == (False, True)
    assert sorted(p.name for p in target.iterdir()) == ["train.json"] and marker.is_file()
    assert not (target / MARKER).exists()
    inside = datasets.pull("data", tmp_path / "plain")  # without one: inside, as before
    assert (tmp_path / "plain" / MARKER).is_file() and not inside.unchanged
