"""GPU metrics through NVML (``nvidia-ml-py``), read by a background thread, never on the request
path: a scrape serves the last snapshot. Without a GPU or driver (``nvmlInit`` fails) no ``tunelab_gpu_*``
series exists at all, rather than zeros.

Labels on every series: ``gpu`` (NVML index), ``uuid``, ``name`` (e.g. "NVIDIA H100 80GB HBM3"),
``pci_bus_id``. Names and units follow Prometheus conventions (base units), so they differ from
dcgm-exporter's; the mapping, for dashboards or recording rules that must match either:

    tunelab_gpu_…                    NVML call (h = device handle)              dcgm-exporter
    utilization_ratio                GetUtilizationRates(h).gpu / 100           DCGM_FI_DEV_GPU_UTIL (%)
    memory_copy_utilization_ratio    GetUtilizationRates(h).memory / 100        DCGM_FI_DEV_MEM_COPY_UTIL (%)
    memory_used_bytes                GetMemoryInfo(h, nvmlMemory_v2).used       DCGM_FI_DEV_FB_USED (MiB)
    memory_reserved_bytes            GetMemoryInfo(h, nvmlMemory_v2).reserved   DCGM_FI_DEV_FB_RESERVED (MiB)
    memory_total_bytes               GetMemoryInfo(h, nvmlMemory_v2).total      FB_USED+FB_FREE+FB_RESERVED
    power_watts                      GetPowerUsage(h) / 1000 (mW)               DCGM_FI_DEV_POWER_USAGE (W)
    power_limit_watts                GetEnforcedPowerLimit(h) / 1000            DCGM_FI_DEV_POWER_MGMT_LIMIT
    temperature_celsius              GetTemperature(h, NVML_TEMPERATURE_GPU)    DCGM_FI_DEV_GPU_TEMP (C)
    sm_clock_hertz                   GetClockInfo(h, NVML_CLOCK_SM) * 1e6       DCGM_FI_DEV_SM_CLOCK (MHz)
    energy_joules_total (counter)    GetTotalEnergyConsumption(h) / 1000 (mJ)   DCGM_FI_DEV_TOTAL_ENERGY_…(mJ)

(NVML functions are ``nvmlDevice…``, e.g. ``nvmlDeviceGetUtilizationRates``.)

The v2 memory call matters: v1's ``used`` includes the driver's reserved memory, so it disagrees
with nvidia-smi and DCGM. dcgm-exporter's label names are ``gpu``, ``UUID``, ``modelName``,
``pci_bus_id`` (and ``Hostname``/``hostname``); DCP profiling fields (``DCGM_FI_PROF_*``) have
no plain-NVML equivalent. A field a GPU does not support (energy before Volta) is left out for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LABELS = ["gpu", "uuid", "name", "pci_bus_id"]
# (series, help, kind) in the order they are exported.
SERIES = (
    ("utilization_ratio", "GPU busy share over the last sample period (0-1).", "gauge"),
    ("memory_copy_utilization_ratio", "Memory controller busy share (0-1).", "gauge"),
    ("memory_used_bytes", "Framebuffer memory in use (NVML v2: excludes reserved).", "gauge"),
    ("memory_reserved_bytes", "Framebuffer memory reserved by the driver.", "gauge"),
    ("memory_total_bytes", "Framebuffer memory in all.", "gauge"),
    ("power_watts", "Power draw.", "gauge"),
    ("power_limit_watts", "Enforced power limit.", "gauge"),
    ("temperature_celsius", "GPU core temperature.", "gauge"),
    ("sm_clock_hertz", "SM clock.", "gauge"),
    ("energy_joules", "Energy consumed since the driver loaded.", "counter"),
)


@dataclass
class GpuSample:
    labels: list[str]
    values: dict[str, float] = field(default_factory=dict)


def read_gpu(nvml: Any, index: int) -> GpuSample:
    """One GPU's values; each field that fails (not supported) is left out."""
    h = nvml.nvmlDeviceGetHandleByIndex(index)
    pci = nvml.nvmlDeviceGetPciInfo(h).busId
    sample = GpuSample(
        [str(index), _text(nvml.nvmlDeviceGetUUID(h)), _text(nvml.nvmlDeviceGetName(h)), _text(pci)]
    )
    readers: dict[str, Callable[[], float]] = {
        "utilization_ratio": lambda: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100,
        "memory_copy_utilization_ratio": lambda: nvml.nvmlDeviceGetUtilizationRates(h).memory / 100,
        "power_watts": lambda: nvml.nvmlDeviceGetPowerUsage(h) / 1000,
        "power_limit_watts": lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
        "temperature_celsius": lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
        "sm_clock_hertz": lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM) * 1e6,
        "energy_joules": lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000,
    }
    try:
        mem = nvml.nvmlDeviceGetMemoryInfo(h, version=nvml.nvmlMemory_v2)
        sample.values.update(
            memory_used_bytes=mem.used, memory_reserved_bytes=mem.reserved, memory_total_bytes=mem.total
        )
    except nvml.NVMLError:
        pass
    for name, read in readers.items():
        try:
            sample.values[name] = float(read())
        except nvml.NVMLError:
            pass
    return sample


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class GpuCollector(Collector):
    """Polls NVML every ``interval_s`` in a daemon thread; ``collect`` serves the last snapshot."""

    def __init__(self, interval_s: float = 5.0, nvml: Any = None) -> None:
        self.interval_s = interval_s
        self._nvml = nvml
        self._snapshot: list[GpuSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Initialises NVML and starts polling; False (and no series) where there is no GPU."""
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                log.info("nvidia-ml-py is not installed: no GPU metrics")
                return False
            self._nvml = pynvml
        try:
            self._nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001  (NVMLError, or a missing libnvidia-ml)
            log.info("no GPU metrics: NVML is not available (%s)", exc)
            self._nvml = None
            return False
        self.poll()
        self._thread = threading.Thread(target=self._run, name="gpu-metrics", daemon=True)
        self._thread.start()
        return True

    def poll(self) -> None:
        nvml = self._nvml
        try:
            self._snapshot = [read_gpu(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            log.warning("reading GPU metrics failed: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snapshot = self._snapshot
        if not snapshot:
            return
        for series, help_text, kind in SERIES:
            name = f"tunelab_gpu_{series}"
            family: GaugeMetricFamily | CounterMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(name.removesuffix("_total"), help_text, labels=LABELS)
            else:
                family = GaugeMetricFamily(name, help_text, labels=LABELS)
            for sample in snapshot:
                if series in sample.values:
                    family.add_metric(sample.labels, sample.values[series])
            if family.samples:
                yield family
