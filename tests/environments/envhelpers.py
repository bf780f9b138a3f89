"""Helpers shared by the environments tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tunelab.environments.v1 import environments_pb2 as pb

READY = pb.Environment.STATE_READY
FAILED = pb.Environment.STATE_FAILED


def spec(requirements: str, **fields: Any) -> pb.EnvironmentSpec:
    return pb.EnvironmentSpec(
        python_version=fields.pop("python_version", "3.11"), requirements=requirements, **fields
    )


def wait(client: Any, name: str, timeout: float = 180) -> pb.Environment:
    env: pb.Environment = client.wait(name, timeout=timeout)
    return env


def rpc_error(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()


def run_python(env_dir: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60, env={}
    )


def log_text(client: Any, name: str) -> str:
    return "\n".join(f"[{line.phase}] {line.text}" for line in client.logs(name))
