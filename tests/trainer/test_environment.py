"""A job with --env runs with the environment's Python first on PATH: the agent materializes the
build the trainer pinned (and leased) for the attempt; the lease goes when the attempt ends."""

from __future__ import annotations

import pytest

from jobhelpers import SUCCEEDED, log_text, py, spec, wait_for
from tunelab.environments.v1 import environments_pb2 as epb


def test_the_environment_python_runs_the_command(make_stack, environments_service) -> None:
    envs = environments_service.client
    envs.create("tiny", epb.EnvironmentSpec(python_version="3.11", requirements="six\n"))
    env = envs.wait("tiny", timeout=180)
    if env.state != epb.Environment.STATE_READY:  # builds resolve against PyPI
        pytest.skip(f"cannot build an environment here: {env.error.splitlines()[:3]}")
    stack = make_stack(environments_addr=environments_service.address)
    code = "import shutil, sys, six\nprint('prefix', sys.prefix)\nprint('python', shutil.which('python'))\n"
    job = stack.client.submit(spec(py(code), environment="environments/tiny"), "in-env")
    done = wait_for(stack.client, job.name)
    logs = log_text(stack.client, job.name)
    assert done.state == SUCCEEDED, logs
    root = stack.data_dir / "cache" / "envs" / env.env_key
    assert f"prefix {root}" in logs.splitlines()
    assert f"python {root}/bin/python" in logs.splitlines()
    assert envs.leases("tiny") == []  # the attempt's lease was released
