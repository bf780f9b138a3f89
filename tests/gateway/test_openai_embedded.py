"""The OpenAI surface through the gateway with the embedded engine behind it (started by the gateway
as `python -m tunelab.engine`), called with the official `openai` client: logprobs in both shapes
and in streams, prompt lists with ``n``, models retrievable by id (adapters by theirs), and a 400
naming the field for tools and structured output, which only the vLLM runtime serves."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tunelab.common.grpc.channel import open_channel
from tunelab.gateway.server import build_gateway
from tunelab.gateway.settings import GatewaySettings
from tunelab.gateway.v1 import gateway_pb2 as pb
from tunelab.gateway.v1 import gateway_pb2_grpc


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> Iterator[str]:
    """One gateway for the module, with deployment "tiny" (adapter "tiny-ad") on the embedded engine."""
    base, lora = tiny_model
    settings = GatewaySettings(
        data_dir=tmp_path_factory.mktemp("gw-openai"),
        port=0,
        metrics_port=0,
        http_port=0,
        health_interval_s=0.5,
        drain_timeout_s=2,
        api_key_auth="off",
    )
    gw = build_gateway(settings)
    gw.start()
    channel = open_channel(gw.grpc.address, settings.auth_token.get_secret_value())
    try:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        deployment = pb.Deployment(
            model_name="tiny",
            base_model=pb.ModelSource(path=str(base)),
            adapters=[pb.LoraAdapter(name="tiny-ad", source=pb.ModelSource(path=str(lora)))],
            upstream=pb.Upstream(embedded=pb.EmbeddedUpstream(device="cpu", max_batch_size=8)),
        )
        stub.CreateDeployment(pb.CreateDeploymentRequest(deployment_id="tiny", deployment=deployment))
        watch = stub.WatchDeployment(pb.WatchDeploymentRequest(name="deployments/tiny"), timeout=240)
        loading = (pb.Deployment.STATE_PENDING, pb.Deployment.STATE_LOADING)
        d = next(r.deployment for r in watch if r.deployment.state not in loading)
        assert d.state == pb.Deployment.STATE_READY, d.error
        yield gw.http.url
    finally:
        channel.close()
        gw.stop(0.5)


@pytest.fixture(scope="module")
def client(gateway_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_completion_logprobs_whole_and_streamed(client) -> None:
    kw = {"model": "tiny", "prompt": "the quick", "max_tokens": 4, "temperature": 0, "logprobs": 2}
    whole = client.completions.create(**kw)
    lp = whole.choices[0].logprobs
    assert lp is not None and whole.usage is not None
    n = whole.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert all(isinstance(v, float) for v in lp.token_logprobs)
    assert all(1 <= len(top) <= 3 for top in lp.top_logprobs)
    tokens, offsets = [], []
    for chunk in client.completions.create(**kw, stream=True):
        for c in chunk.choices:
            if c.logprobs is not None:
                tokens += c.logprobs.tokens or []
                offsets += c.logprobs.text_offset or []
    assert (tokens, offsets) == (lp.tokens, lp.text_offset)


def test_chat_logprobs_whole_and_streamed(client) -> None:
    kw = {
        "model": "tiny-ad",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
    }
    whole = client.chat.completions.create(**kw)
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None and logprobs.content and whole.usage is not None
    assert len(logprobs.content) == whole.usage.completion_tokens
    assert all(len(e.top_logprobs) == 3 and e.bytes is not None for e in logprobs.content)
    streamed = []
    for chunk in client.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            if c.logprobs is not None:
                streamed += c.logprobs.content or []
    assert streamed == logprobs.content


def test_logprob_bounds_answer_400(client) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", logprobs=21)
    assert "logprobs" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=21
        )
    assert "top_logprobs" in e.value.message


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
            "tools",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_tools_and_structured_output_are_refused_naming_the_field(client, fields, named) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2, **fields
        )
    assert e.value.status_code == 400
    assert f"does not support '{named}'" in e.value.message and "vLLM runtime" in e.value.message


def test_tools_with_tool_choice_none_are_unused(client) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    kw = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
    plain = client.chat.completions.create(**kw)
    unused = client.chat.completions.create(**kw, tools=tools, tool_choice="none")
    assert unused.choices[0].message.content == plain.choices[0].message.content
    assert not unused.choices[0].message.tool_calls


def test_models_retrievable_by_id(client) -> None:
    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {"tiny", "tiny-ad"}
    for model_id, card in listed.items():
        got = client.models.retrieve(model_id)
        assert got == card and got.object == "model" and got.owned_by and got.created
    assert client.models.retrieve("tiny-ad").model_extra["parent"] == "tiny"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert e.value.body["type"] == "NotFoundError" and e.value.body["code"] == 404  # type: ignore[index]


def test_prompt_lists_with_n(client) -> None:
    kw = {"model": "tiny", "max_tokens": 3, "temperature": 0}
    alone = [client.completions.create(prompt=p, **kw).choices[0].text for p in ("hello", "the quick")]
    out = client.completions.create(prompt=["hello", "the quick"], n=2, **kw)
    assert [(c.index, c.text) for c in out.choices] == list(
        enumerate([alone[0], alone[0], alone[1], alone[1]])
    )
    assert len(client.completions.create(prompt=[[5, 6, 7], [8, 9]], **kw).choices) == 2
    assert len(client.completions.create(prompt=[5, 6, 7], **kw).choices) == 1
    texts: dict[int, str] = {}
    for chunk in client.completions.create(prompt=["hello", "the quick"], n=2, stream=True, **kw):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert [texts[i] for i in range(4)] == [c.text for c in out.choices]
