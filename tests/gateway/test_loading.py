"""The loader's control-plane calls to a vLLM replica: health checks reuse one connection per
replica for the deployment's life (building an HTTP client costs tens of milliseconds of CPU in the
gateway's process), and unloading closes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fake_openai import FakeServer
from tunelab.common.errors import Unavailable
from tunelab.gateway.engines import EngineLauncher
from tunelab.gateway.loading import Loader, Replicas
from tunelab.gateway.models import ModelFetcher
from tunelab.gateway.specs import Adapter, DeploymentSpec, ModelSource, UpstreamSpec


def _loader(tmp_path: Path) -> Loader:
    fetcher = ModelFetcher("127.0.0.1:1", "", tmp_path / "models")
    return Loader(fetcher, EngineLauncher("python3", tmp_path / "logs"), load_timeout_s=5)


def _spec(url: str) -> DeploymentSpec:
    return DeploymentSpec(
        id="d1",
        model_name="base-model",
        base=ModelSource(path="base-model"),
        upstream=UpstreamSpec(kind="vllm", base_urls=(url,)),
        adapters=(Adapter("ad", ModelSource(path="/adapters/ad")),),
    )


def test_health_checks_reuse_one_connection_until_unload(fake: FakeServer, tmp_path: Path) -> None:
    loader, spec = _loader(tmp_path), _spec(fake.url)
    replicas = Replicas([fake.url], {"base-model"}, {"ad": "/adapters/ad"})

    statuses = [loader.check(spec, replicas, fake.url) for _ in range(3)]

    assert all(s.healthy for s in statuses), statuses
    assert fake.record.loaded == {"ad": "/adapters/ad"}  # loaded once, by the first check
    assert len(fake.record.control_peers) == 3
    assert len(set(fake.record.control_peers)) == 1, fake.record.control_peers

    loader.unload(spec, replicas)
    assert "ad" not in fake.behaviour.models
    status = loader.check(spec, replicas, fake.url)  # after an unload: a new client, a new connection
    assert status.healthy
    assert len(set(fake.record.control_peers)) == 2


def test_a_check_racing_an_unload_reports_unavailable(fake: FakeServer) -> None:
    replicas = Replicas([fake.url], {"base-model"}, {})
    client = replicas.client(fake.url, "", 5.0)
    replicas.close_clients()  # what unload does while a health check may still hold the client

    with pytest.raises(Unavailable, match="being unloaded"):
        client.health()
