"""Bad input is refused at submit with a message that says what to change, or fails the job with
a reason that names the problem (and is not retried when retrying cannot help)."""

from __future__ import annotations

from pathlib import Path

import grpc

from jobhelpers import FAILED, SUCCEEDED, py, rpc_error, spec, wait_for
from tunelab.datasets.v1 import datasets_pb2 as dpb
from tunelab.trainer.v1 import trainer_pb2 as pb


def test_refused_at_submit(make_stack, environments_service) -> None:
    stack = make_stack(environments_addr=environments_service.address)
    client, datasets = stack.client, stack.datasets
    datasets.create("data", dpb.Source(upload=dpb.UploadSource()))  # no version uploaded yet
    cases = [
        (
            spec(["true"], datasets=[pb.DatasetMount(dataset="datasets/data", path="../../etc")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "outside the working directory",
        ),
        (
            spec(
                ["true"],
                working_dir="/srv/job",
                datasets=[pb.DatasetMount(dataset="datasets/d", path="/srv")],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "mounts must stay inside --working-dir",
        ),
        (
            spec(["true"], datasets=[pb.DatasetMount(dataset="datasets/nope", path="data")]),
            grpc.StatusCode.NOT_FOUND,
            "dataset 'nope' does not exist",
        ),
        (
            spec(["true"], datasets=[pb.DatasetMount(dataset="datasets/data", path="data")]),
            grpc.StatusCode.NOT_FOUND,
            "has no READY version yet",
        ),
        (spec(["true"], environment="environments/nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (
            spec(["true"], resources=pb.Resources(gpu_count=3)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "asks for 3 GPU(s) but the executor has 2",
        ),
        (spec(["true"], type=pb.JOB_TYPE_TENSORFLOW), grpc.StatusCode.UNIMPLEMENTED, "PYTORCH"),
        (spec([]), grpc.StatusCode.INVALID_ARGUMENT, "give the command"),
        (spec(["true"], priority_class="urgent"), grpc.StatusCode.INVALID_ARGUMENT, "high (100000)"),
    ]
    for job_spec, code, words in cases:
        got, message = rpc_error(lambda job_spec=job_spec: client.submit(job_spec))
        assert (got, words in message) == (code, True), (message, words)
    assert not list(client.list())
    valid = client.submit(spec(["true"]), validate_only=True)  # a dry run submits nothing
    assert valid.state == pb.Job.STATE_QUEUED and not list(client.list())


def test_a_command_that_does_not_exist_fails_without_retries(stack) -> None:
    client = stack.client
    job = client.submit(spec(["no-such-command-xyz", "--flag"]), "missing")
    done = wait_for(client, job.name)
    assert (done.state, done.reason, done.attempt) == (FAILED, "CommandNotFound", 1)
    assert "'no-such-command-xyz' not found on PATH" in done.message
    job = client.submit(spec(["./not-here.sh"]), "relative")
    assert wait_for(client, job.name).reason == "CommandNotFound"


def test_an_output_directory_holding_other_files_is_not_overwritten(stack, tmp_path: Path) -> None:
    """The job's working directory is its own, as a pod's: what the machine has at that path is
    neither seen nor touched."""
    client, datasets = stack.client, stack.datasets
    datasets.create("out", dpb.Source(empty=dpb.EmptySource()))
    work = tmp_path / "work"
    (work / "output").mkdir(parents=True)
    (work / "output" / "mine.txt").write_text("precious")
    mounts = [pb.DatasetMount(dataset="datasets/out", path="output")]
    write = py("import os; assert os.listdir('output') == []; open('output/theirs.txt', 'w').write('x')")
    job = client.submit(spec(write, working_dir=str(work), datasets=mounts), "clobber")
    done = wait_for(client, job.name)
    assert done.state == SUCCEEDED, f"{done.reason}: {done.message}"
    assert sorted(p.name for p in (work / "output").iterdir()) == ["mine.txt"]
    assert (work / "output" / "mine.txt").read_text() == "precious"
