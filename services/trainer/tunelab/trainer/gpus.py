"""The GPU inventory of this machine: NVML where a driver is present, else what settings say."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str = ""
    model: str = ""
    memory_bytes: int = 0


def nvml_gpus() -> list[GpuInfo]:
    """The GPUs NVML sees; empty without nvidia-ml-py, a driver, or GPUs."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError subclasses vary with the driver: no GPUs here
        log.info("NVML unavailable (%s): no GPUs detected", exc)
        return []
    try:
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            found.append(
                GpuInfo(
                    i,
                    uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    name.decode() if isinstance(name, bytes) else str(name),
                    int(memory),
                )
            )
        return found
    finally:
        pynvml.nvmlShutdown()


def inventory(configured: int | None) -> list[GpuInfo]:
    """NVML's GPUs; ``configured`` (TUNELAB_GPUS), when set, keeps only that many, or stands in
    with placeholders where NVML finds fewer (a machine without GPUs, tests)."""
    found = nvml_gpus()
    if configured is None:
        return found
    if configured <= len(found):
        return found[:configured]
    return found + [GpuInfo(i) for i in range(len(found), configured)]
