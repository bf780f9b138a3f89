"""A job's CPU and memory are real or refused: beyond the executor's capacity they are refused at
submit with the numbers; within it the local executor holds the job to them with a cgroup of its
own where the machine allows (the OOM test is skipped where the trainer cannot write cgroups),
and says so in the job's log either way. An --image, which the local executor cannot use, is
noted at submit and in the log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from jobhelpers import FAILED, RUNNING, SUCCEEDED, log_text, py, rpc_error, spec, wait_for, wait_until
from tunelab.cli.main import app
from tunelab.trainer.cgroups import ENTER_FAILED, Limits
from tunelab.trainer.confinement import Confinement
from tunelab.trainer.scheduler import beyond_capacity
from tunelab.trainer.v1 import trainer_pb2 as pb

GiB, MiB = 1 << 30, 1 << 20
SMALL = {"cpu_millis": 2000, "memory_bytes": 8 * GiB}  # the capacity the trainer reports


def cgroup_dirs(confinement: Confinement) -> list[Path]:
    """The trainer's attempt cgroups, in every hierarchy."""
    cg = confinement.cgroups
    assert cg is not None
    return [d for parent in cg.parents for d in parent.iterdir() if d.name.startswith(cg.prefix)]


def enforcing(stack) -> Confinement:  # type: ignore[no-untyped-def]
    confinement = stack.trainer.executor.confinement
    if confinement.cgroups is None:
        pytest.skip(f"the trainer cannot limit jobs here: {confinement.unavailable}")
    return confinement


def test_cpu_and_memory_beyond_the_capacity_are_refused_with_the_numbers(make_stack) -> None:
    client = make_stack(**SMALL).client

    def refused(resources: pb.Resources, **more: object) -> str:
        code, message = rpc_error(lambda: client.submit(spec(["true"], resources=resources, **more)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        return message

    offers = "the local executor offers 2 CPUs and 8 GiB memory"
    assert (
        f"resources: cpu=64 per worker, but {offers}; lower --resources or raise the trainer's capacity "
        "(TUNELAB_CPU_MILLIS=64000)"
    ) in refused(pb.Resources(cpu_millis=64000))
    assert (
        f"resources: memory=512Gi per worker, but {offers}; lower --resources or raise the trainer's "
        f"capacity (TUNELAB_MEMORY_BYTES={512 * GiB})"
    ) in refused(pb.Resources(memory_bytes=512 * GiB))
    assert "cpu=1500m per worker x 2 workers = 3 CPUs, but" in refused(
        pb.Resources(cpu_millis=1500), workers=2
    )
    requests = pb.Resources(memory_bytes=9 * GiB)  # what is checked where given
    assert f"requests: memory=9Gi per worker, but {offers}; lower --requests-resources" in refused(
        pb.Resources(memory_bytes=9 * GiB), requests=requests
    )
    # Limits above the capacity with requests within it are a ceiling only.
    fits = spec(["true"], resources=pb.Resources(cpu_millis=64000), requests=pb.Resources(cpu_millis=1000))
    client.submit(fits, validate_only=True)
    assert not list(client.list())


def test_a_cluster_whose_capacity_is_unknown_refuses_nothing() -> None:
    huge = spec(["true"], resources=pb.Resources(cpu_millis=10**6, memory_bytes=10**15))
    assert beyond_capacity(huge, "kubernetes", 0, 0) == ""
    assert "the kubernetes executor offers 16 CPUs;" in beyond_capacity(huge, "kubernetes", 16000, 0)


def test_a_job_within_its_limits_runs_in_a_cgroup_of_its_own(make_stack) -> None:
    stack = make_stack(**SMALL)
    client = stack.client
    cgroup = "print(open('/proc/self/cgroup').read(), flush=True)"
    limits = pb.Resources(cpu_millis=1000, memory_bytes=512 * MiB)
    job = wait_for(client, client.submit(spec(py(cgroup), resources=limits), "limited").name)
    assert job.state == SUCCEEDED, job.message
    log = log_text(client, "limited")
    confinement = stack.trainer.executor.confinement
    if confinement.cgroups is None:
        assert f"resources not enforced: {confinement.unavailable}" in log
        return
    assert f"limits: 1 CPU, 512 MiB memory (cgroup v{confinement.cgroups.version})" in log
    assert f"/{confinement.cgroups.prefix}limited-1\n" in log  # the command ran inside it
    wait_until(lambda: not cgroup_dirs(confinement), 30, "the attempt's cgroup removed")


def test_a_job_past_its_memory_limit_fails_as_oomkilled(make_stack) -> None:
    stack = make_stack(**SMALL)
    confinement = enforcing(stack)
    client = stack.client
    grow = py("x = b'1' * (1 << 30)\nprint(len(x))")
    limits = pb.Resources(memory_bytes=256 * MiB)
    never = pb.RESTART_POLICY_NEVER
    job = wait_for(client, client.submit(spec(grow, resources=limits, restart_policy=never), "hog").name)
    assert (job.state, job.reason) == (FAILED, "OOMKilled"), job.message
    assert "exceeded its memory limit of 256 MiB" in job.message
    wait_until(lambda: not cgroup_dirs(confinement), 30, "the attempt's cgroup removed")


def test_a_killed_job_leaves_no_cgroup(make_stack) -> None:
    stack = make_stack(**SMALL)
    confinement = enforcing(stack)
    client = stack.client
    sleeper = py("import subprocess, time\nsubprocess.Popen(['sleep', '600'])\ntime.sleep(600)")
    client.submit(spec(sleeper, resources=pb.Resources(cpu_millis=500)), "sleeper")
    wait_for(client, "sleeper", [RUNNING])
    assert cgroup_dirs(confinement)  # made before the agent started
    client.delete("sleeper", force=True)  # kills the attempt
    wait_until(lambda: not cgroup_dirs(confinement), 30, "the attempt's cgroup removed")


def test_a_restarted_trainer_removes_the_cgroups_left_empty(tmp_path: Path) -> None:
    first = Confinement(tmp_path)
    if first.cgroups is None:
        pytest.skip(f"the trainer cannot limit jobs here: {first.unavailable}")
    group, line = first.create("left", 1, Limits(memory_bytes=64 * MiB), 1)
    assert group is not None and line == f"limits: 64 MiB memory (cgroup v{first.cgroups.version})"
    assert all(d.is_dir() for d in group.dirs)
    Confinement(tmp_path)  # the same data directory: what an earlier run left is swept
    assert not any(d.exists() for d in group.dirs)
    assert Confinement(tmp_path / "other").cgroups.prefix != first.cgroups.prefix  # type: ignore[union-attr]


def test_the_agent_starts_inside_its_cgroup(tmp_path: Path) -> None:
    confinement = Confinement(tmp_path)
    if confinement.cgroups is None:
        pytest.skip(f"the trainer cannot limit jobs here: {confinement.unavailable}")
    group, _ = confinement.create("wrapped", 1, Limits(cpu_millis=500), 1)
    assert group is not None
    inside = subprocess.run(group.wrap(["cat", "/proc/self/cgroup"]), capture_output=True, text=True)
    assert inside.returncode == 0 and f"/{group.name}\n" in inside.stdout
    assert group.remove()
    gone = subprocess.run(group.wrap(["true"]), capture_output=True, text=True)
    assert gone.returncode == ENTER_FAILED and "cgroup.procs" in gone.stderr  # never runs outside


def test_an_image_is_noted_at_submit_and_in_the_log(
    stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELAB_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("TUNELAB_TRAINER_ADDR", stack.address)
    monkeypatch.delenv("TUNELAB_TOKEN", raising=False)
    image = "release.daocloud.io/baize/baize-notebook:v0.5.0"
    args = ["job", "submit", "--name", "imaged", "--image", image, "--watch", "--", "true"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    note = f"--image {image} is recorded, not used"
    assert f"note: the local executor runs commands on this host; {note}" in result.output
    assert f"{note}: the local executor runs commands on this host" in log_text(stack.client, "imaged")
