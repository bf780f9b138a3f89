"""Debian's prometheus scrapes the gateway; a PromQL query through its HTTP API returns the
request series."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from support import free_port
from tunelab.gateway.gpu import GpuCollector

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture
def prometheus(tmp_path: Path, served):
    if not Path(PROMETHEUS).exists():
        pytest.fail("prometheus is missing: apt-get install -y prometheus")
    port = free_port()
    target = served.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: tunelab-gateway\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    # Prometheus answers 503 until its TSDB is open; queries before that are not answers.
    deadline = time.monotonic() + 60
    while not _ready(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"prometheus did not become ready: see {tmp_path / 'prometheus.log'}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_prometheus_scrapes_request_metrics(served, prometheus: str) -> None:
    with served.http() as c:
        for _ in range(3):
            assert c.post("/v2/models/chatglm3-ad/generate", json={"text_input": "x"}).status_code == 200
        with c.stream("POST", "/v1/completions", json={"model": "ad", "prompt": "x", "stream": True}) as r:
            r.read()
    query = 'sum by (model, route, code) (tunelab_gateway_requests_total{model="chatglm3-ad"})'
    deadline = time.monotonic() + 30
    result: list = []
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=5).json()
            result = resp["data"]["result"]
        except (httpx.HTTPError, KeyError):
            result = []
        if result and float(result[0]["value"][1]) == 3:
            break  # a scrape after the last request
        time.sleep(0.5)
    assert result, "prometheus returned no series"
    assert result[0]["metric"] == {"model": "chatglm3-ad", "route": "triton_generate", "code": "200"}
    assert float(result[0]["value"][1]) == 3
    ttft = httpx.get(
        f"{prometheus}/api/v1/query", params={"query": "tunelab_gateway_time_to_first_token_seconds_count"}
    ).json()
    assert ttft["data"]["result"]
    tokens = httpx.get(
        f"{prometheus}/api/v1/query", params={"query": "tunelab_gateway_generation_tokens_total"}
    )
    assert tokens.json()["data"]["result"]


class FakeNvml:
    """Just enough of pynvml for one GPU."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    nvmlMemory_v2 = 2

    class NVMLError(Exception):
        pass

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return "h"

    def nvmlDeviceGetPciInfo(self, h):
        return type("P", (), {"busId": b"00000000:00:06.0"})()

    def nvmlDeviceGetUUID(self, h) -> str:
        return "GPU-1"

    def nvmlDeviceGetName(self, h) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUtilizationRates(self, h):
        return type("U", (), {"gpu": 50, "memory": 10})()

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        assert version == self.nvmlMemory_v2
        return type("M", (), {"used": 1000, "reserved": 500, "total": 80_000})()

    def nvmlDeviceGetPowerUsage(self, h) -> int:
        return 73_054

    def nvmlDeviceGetEnforcedPowerLimit(self, h) -> int:
        return 700_000

    def nvmlDeviceGetTemperature(self, h, kind) -> int:
        return 34

    def nvmlDeviceGetClockInfo(self, h, kind) -> int:
        return 345

    def nvmlDeviceGetTotalEnergyConsumption(self, h) -> int:
        raise self.NVMLError("not supported")


def test_gpu_metrics_from_nvml_and_absent_without_gpu() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    gpu = GpuCollector(60, nvml=FakeNvml())
    reg.register(gpu)
    assert "tunelab_gpu" not in generate_latest(reg).decode()
    assert gpu.start()
    text = generate_latest(reg).decode()
    gpu.stop()
    labels = 'gpu="0",name="NVIDIA H100 80GB HBM3",pci_bus_id="00000000:00:06.0",uuid="GPU-1"'
    assert f"tunelab_gpu_utilization_ratio{{{labels}}} 0.5" in text
    assert f"tunelab_gpu_memory_used_bytes{{{labels}}} 1000.0" in text
    assert f"tunelab_gpu_power_watts{{{labels}}} 73.054" in text
    assert f"tunelab_gpu_sm_clock_hertz{{{labels}}} 3.45e+08" in text
    assert "energy" not in text  # unsupported on this GPU: left out, not zero
    real = GpuCollector(60)  # this machine has no GPU: start() says so and nothing is exported
    if not real.start():
        assert list(real.collect()) == []
    real.stop()


def test_dashboard_queries_only_exported_series(served) -> None:
    import json
    import re

    from prometheus_client import CollectorRegistry, generate_latest

    dashboard = Path(__file__).parents[2] / "services/gateway/tunelab/gateway/dashboards/gateway.json"
    exprs = [t["expr"] for p in json.loads(dashboard.read_text())["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"tunelab_[a-z_]+", e)}
    gpu_reg = CollectorRegistry()
    gpu = GpuCollector(60, nvml=FakeNvml())
    gpu_reg.register(gpu)
    gpu.start()
    with served.http() as c:
        c.post("/v1/completions", json={"model": "ad", "prompt": "x", "stream": True})
        exported = c.get("/metrics").text + generate_latest(gpu_reg).decode()
    gpu.stop()
    names = set(re.findall(r"^# TYPE (\S+) (\S+)", exported, re.M))
    known = set()
    for name, _kind in names:
        known |= {name, f"{name}_total", f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    assert used and used <= known | {"tunelab_gpu_energy_joules_total"}, used - known
