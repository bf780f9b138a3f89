"""On a machine with NVIDIA GPUs (skipped elsewhere): NVML's inventory, and the local executor's
layout running a real NCCL all-reduce under torchrun on the GPUs it assigns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.cli.agent.command import build_argv, resolve
from tunelab.trainer.gpus import inventory, nvml_gpus
from tunelab.trainer.local import LocalExecutor

pytestmark = pytest.mark.gpu

DDP = """
import os, torch, torch.distributed as dist
dist.init_process_group("nccl")
local = int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(local)
t = torch.tensor([dist.get_rank() + 1.0], device="cuda")
dist.all_reduce(t)
print(f"rank {dist.get_rank()}/{dist.get_world_size()} sum={t.item()}", flush=True)
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def gpus() -> list[object]:
    found = nvml_gpus()
    if not found:
        pytest.skip("no NVIDIA GPU (NVML found none)")
    return found


def run(ex: LocalExecutor, assigned: list[str], command: list[str], tmp_path: Path) -> str:
    env = {**os.environ, **ex.place("gpu", 1, 1, assigned).env_vars}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    argv = resolve(build_argv(command, env), env, tmp_path)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_nvml_inventory_and_torchrun_on_the_assigned_gpus(gpus: list, tmp_path: Path) -> None:
    import torch

    assert len(gpus) == torch.cuda.device_count()
    assert gpus[0].model and gpus[0].memory_bytes > 0 and gpus[0].uuid.startswith("GPU-")
    assert [g.index for g in inventory(1)] == [0]
    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    ex = LocalExecutor(["true"], tmp_path, {}, gpus)
    ids = [str(g.index) for g in gpus]
    n = len(ids)
    out = run(ex, ids, ["python", str(script)], tmp_path)  # wrapped in torchrun: one process a GPU
    assert sorted(out.split("\n")[:n]) == [f"rank {r}/{n} sum={n * (n + 1) / 2}" for r in range(n)]
    assert "rank 0/1 sum=1.0" in run(ex, ids[-1:], ["torchrun", str(script)], tmp_path)  # the user's torchrun
    cpu = run(ex, [], ["python", "-c", "import torch; print(torch.cuda.device_count())"], tmp_path)
    assert cpu.strip() == "0"  # a CPU job sees no GPU
