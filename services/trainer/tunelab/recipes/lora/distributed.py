"""Data-parallel training under torchrun: who this process is, and the few collectives the recipe uses.

    world = World.from_env()        # WORLD_SIZE / RANK / LOCAL_RANK as torchrun sets them (1 process: size 1)
    world.start(device)             # the process group: nccl on CUDA, gloo on CPU (nothing for size 1)
    ...
    world.stop()                    # destroys it

Every rank holds the whole LoRA model and trains on its own share of each step's micro-batches; the
recipe sums the LoRA gradients over ranks before the optimizer step (`all_reduce_`), so all ranks
take the same step and stay identical. Rank 0 alone writes checkpoints, the adapter, metrics and runs
evaluation; the others wait at `barrier()`. With one process every method is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from tunelab.recipes.lora.errors import ConfigError

# Rank 0 may evaluate (generation) or write a merged model while the others wait at a barrier.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> World:
        env = dict(os.environ if env is None else env)
        try:
            size = int(env.get("WORLD_SIZE", "1") or 1)
            if size <= 1:
                return cls()
            rank, local = int(env["RANK"]), int(env["LOCAL_RANK"])
        except KeyError as e:
            raise ConfigError(
                f"WORLD_SIZE is {env['WORLD_SIZE']} but {e.args[0]} is not set: launch with torchrun"
            ) from None
        except ValueError as e:
            raise ConfigError(f"WORLD_SIZE / RANK / LOCAL_RANK must be whole numbers: {e}") from None
        if not 0 <= rank < size or local < 0:
            raise ConfigError(f"RANK {rank} / LOCAL_RANK {local} do not fit WORLD_SIZE {size}")
        return cls(size, rank, local)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1 and dist.is_initialized()

    def start(self, device: torch.device) -> None:
        if self.size <= 1 or dist.is_initialized():
            return
        if device.type == "cuda":
            if device.index is None or device.index >= torch.cuda.device_count():
                raise ConfigError(
                    f"LOCAL_RANK {self.local_rank} has no GPU: {torch.cuda.device_count()} visible "
                    "(run as many processes per node as GPUs)"
                )
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=TIMEOUT)

    def stop(self) -> None:
        if self.active:
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_reduce_(self, tensor: torch.Tensor, op: Any = None) -> torch.Tensor:
        """Sum (or `op`) `tensor` over ranks, in place; asynchronous to the host on CUDA."""
        if self.active:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values into every rank's `tensors`."""
        if self.active:
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def min_int(self, value: int | None, device: torch.device) -> int | None:
        """The smallest `value` over ranks (None stays None: it is the same on every rank)."""
        if value is None or not self.active:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=device)
        return int(self.all_reduce_(t, dist.ReduceOp.MIN).item())

    def check_same(self, value: Any, what: str) -> None:
        """Fail on every rank where the ranks disagree about `value` (a batch layout, a step count)."""
        if not self.active:
            return
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise ConfigError(f"the ranks disagree on {what}: {values}")


def sum_gradients(world: World, params: list[torch.Tensor], extra: torch.Tensor) -> torch.Tensor:
    """Sum the gradients of `params` and the values of `extra` over ranks, with one all-reduce.

    Gradients are flattened into one fp32 buffer (LoRA's are a few MB) and written back; returns
    `extra` summed. With one process it returns `extra` as it is.
    """
    if not world.active:
        return extra
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [extra.reshape(-1).float()])
    world.all_reduce_(flat)
    at = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        g.copy_(flat[at : at + n].view_as(g))
        p.grad = g
        at += n
    return flat[at:].view_as(extra)
