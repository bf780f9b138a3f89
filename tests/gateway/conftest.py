"""Fixtures: the gateway in this process (gRPC + HTTP), fake vLLM servers, deployments on them,
and a tiny model with a LoRA adapter built locally (never downloaded)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))  # glmtiny: models like the imported ChatGLM3

from fake_openai import Behaviour, FakeServer
from gatewayhelpers import vllm_deployment
from tunelab.common.grpc.channel import open_channel
from tunelab.gateway.server import Gateway, build_gateway
from tunelab.gateway.settings import GatewaySettings
from tunelab.gateway.v1 import gateway_pb2 as pb
from tunelab.gateway.v1 import gateway_pb2_grpc


@dataclass
class GatewayUnderTest:
    gateway: Gateway
    stub: gateway_pb2_grpc.GatewayServiceStub
    channel: grpc.Channel

    @property
    def url(self) -> str:
        return self.gateway.http.url

    def http(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    def deploy(self, deployment_id: str, deployment: pb.Deployment, timeout: float = 120) -> pb.Deployment:
        """Creates a deployment and waits until it leaves PENDING/LOADING."""
        self.stub.CreateDeployment(
            pb.CreateDeploymentRequest(deployment_id=deployment_id, deployment=deployment)
        )
        return self.wait(deployment_id, timeout)

    def wait(self, deployment_id: str, timeout: float = 120) -> pb.Deployment:
        deadline = time.monotonic() + timeout
        for resp in self.stub.WatchDeployment(
            pb.WatchDeploymentRequest(name=f"deployments/{deployment_id}"), timeout=timeout
        ):
            d = resp.deployment
            if d.state not in (pb.Deployment.STATE_PENDING, pb.Deployment.STATE_LOADING):
                return d
            assert time.monotonic() < deadline
        raise AssertionError("watch ended")


GatewayFactory = Callable[..., GatewayUnderTest]


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[GatewayFactory]:
    started: list[GatewayUnderTest] = []

    def make(**overrides: Any) -> GatewayUnderTest:
        """A started gateway. API keys are off unless ``api_key_auth="on"`` (the setting's default,
        which test_auth.py tests): the other tests call the routes without a key."""
        values: dict[str, Any] = {
            "api_key_auth": "off",
            "data_dir": tmp_path / f"gw{len(started)}",
            "port": 0,
            "metrics_port": 0,
            "http_port": 0,
            "health_interval_s": 0.5,
            "drain_timeout_s": 2,
            "gpu_poll_interval_s": 1,
        }
        settings = GatewaySettings(**{**values, **overrides})
        gateway = build_gateway(settings)
        gateway.start()
        channel = open_channel(gateway.grpc.address, settings.auth_token.get_secret_value())
        gut = GatewayUnderTest(gateway, gateway_pb2_grpc.GatewayServiceStub(channel), channel)
        started.append(gut)
        return gut

    yield make
    for gut in started:
        gut.channel.close()
        gut.gateway.stop(0.5)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer(Behaviour()).start()
    yield server
    server.stop()


@pytest.fixture
def served(make_gateway: GatewayFactory, fake: FakeServer) -> GatewayUnderTest:
    """A gateway with deployment "chatglm3-ad" on the fake vLLM: base "base-model", adapter "ad"
    loaded at runtime and applied by default."""
    gut = make_gateway()
    d = gut.deploy(
        "chatglm3-ad", vllm_deployment(fake.url, adapters={"ad": "/models/ad"}, default_adapter="ad")
    )
    assert d.state == pb.Deployment.STATE_READY, d.error
    return gut


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random Llama with its own tokenizer, and a LoRA adapter for it (random, non-zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.recipes.tinymodel import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    text = "\n".join(
        ["hello world, a tiny model writes ad copy", "广告 文案 生成", "the quick brown fox"] * 30
    )
    base = build_tiny_model(root / "base", text, vocab_size=300)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    lora.save_pretrained(root / "lora")
    return base, root / "lora"


@dataclass(frozen=True)
class Chatglm3Like:
    """A tiny GLM shaped like the imported ChatGLM3 (fast tokenizer, chat template, stop tokens) with
    a LoRA adapter, and a sequence-first model that ships its code (auto_map) with one."""

    glm: Path
    glm_lora: Path
    seqfirst: Path
    seqfirst_lora: Path


@pytest.fixture(scope="session")
def chatglm3_like(tmp_path_factory: pytest.TempPathFactory) -> Chatglm3Like:
    from glmtiny import build_glm, build_lora, build_seqfirst

    root = tmp_path_factory.mktemp("chatglm3-like")
    glm, seqfirst = build_glm(root / "glm"), build_seqfirst(root / "seqfirst")
    return Chatglm3Like(
        glm,
        build_lora(glm, root / "glm-lora", ["q_proj", "v_proj"]),
        seqfirst,
        build_lora(seqfirst, root / "seqfirst-lora", ["query_key_value"], trust_remote_code=True),
    )
