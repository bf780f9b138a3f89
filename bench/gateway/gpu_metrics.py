"""Shows the gateway's NVML GPU series with real values on a GPU machine.

    PYTHONPATH=services/common:services/gateway python bench/gateway/gpu_metrics.py [--load-s 5]

Runs the gateway's own collector (``tunelab.gateway.gpu.GpuCollector``, the one its ``/metrics``
serves) while a matmul keeps the first GPU busy (when torch with CUDA is there), prints the
Prometheus text and nvidia-smi's view for comparison, and writes bench/results/gateway-gpu.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common as bc

from tunelab.gateway.gpu import GpuCollector


def busy(seconds: float, started: threading.Event) -> None:
    try:
        import torch
    except ImportError:
        started.set()
        return
    if not torch.cuda.is_available():
        started.set()
        return
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    started.set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        a @ a
    torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--load-s", type=float, default=6.0)
    args = parser.parse_args()
    collector = GpuCollector(interval_s=1.0)
    if not collector.start():
        sys.exit("no NVML here: run this on a machine with an NVIDIA GPU and driver")
    registry = CollectorRegistry()
    registry.register(collector)
    started = threading.Event()
    load = threading.Thread(target=busy, args=(args.load_s, started))
    load.start()
    started.wait(120)
    time.sleep(min(3.0, args.load_s / 2))  # two polls of the collector while the GPU is busy
    text = generate_latest(registry).decode()
    load.join()
    collector.stop()
    smi = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,utilization.gpu,memory.used,memory.total,power.draw,"
            "temperature.gpu,clocks.sm",
            "--format=csv",
        ],
        capture_output=True,
        text=True,
    ).stdout
    print(text)
    print(smi)
    series = sorted({line.split("{")[0] for line in text.splitlines() if line.startswith("tunelab_gpu_")})
    target = bc.Target(
        "nvml_series", ">=", 8, float(len(series)), "distinct tunelab_gpu_* series with values"
    )
    path = bc.write_result(
        "gateway-gpu",
        {"nvml_series": len(series), "series": series, "nvidia_smi": smi.strip(), "exposition": text},
        {"nvml_series": target},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
