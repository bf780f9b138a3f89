"""The end-to-end tests' stack: the walkthrough's own code (scripts/walkthrough.py) on a stack of
its own (data dir, ports, config and caches under the test's tmp_path), always brought down."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2ehelpers import processes_under
from support import free_port, free_port_base

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment every `tunelab` command of the test runs with. Afterwards the stack goes
    down, and anything still running under tmp_path is killed (a failed test must not leak)."""
    from tunelab.cli import stack

    data_dir = tmp_path / "stack"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}
    env.update(
        TUNELAB_DATA_DIR=str(data_dir),
        TUNELAB_CONFIG=str(tmp_path / "no-config.yaml"),
        TUNELAB_CACHE_DIR=str(tmp_path / "cache"),
        TUNELAB_PORT_BASE=str(free_port_base()),
        TUNELAB_METRICS_PORT_BASE="0",
        TUNELAB_HTTP_PORT=str(free_port()),
        TUNELAB_ALLOWED_NETWORKS='["127.0.0.1/32"]',  # the sample is downloaded from this machine
    )
    yield env
    stack.down(data_dir, lambda _: None, grace_s=10)
    for pid in processes_under(tmp_path):
        try:
            group = os.getpgid(pid)
            if group == os.getpgid(0):  # never this test run's own group
                os.kill(pid, signal.SIGKILL)
            else:
                os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 10
    while processes_under(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
