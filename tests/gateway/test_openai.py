"""The OpenAI routes through the gateway, called with the official `openai` client."""

from __future__ import annotations

import openai
import pytest

from fake_openai import FakeServer
from gatewayhelpers import vllm_deployment
from tunelab.gateway.v1 import gateway_pb2 as pb


def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)


def test_completion_and_models(served, fake: FakeServer) -> None:
    c = client(served)
    out = c.completions.create(model="chatglm3-ad", prompt="Say hi")
    assert out.choices[0].text == "Hello, world!"
    assert out.model == "chatglm3-ad"  # the upstream's name for it ("ad") is not shown
    assert out.usage is not None and out.usage.completion_tokens == 4
    sent = fake.record.requests[-1]
    assert sent["max_tokens"] == 16 and sent["model"] == "ad"  # vLLM's default, always sent
    assert sorted(m.id for m in c.models.list().data) == ["ad", "chatglm3-ad"]


def test_streaming_chat_with_usage(served, fake: FakeServer) -> None:
    c = client(served)
    stream = c.chat.completions.create(
        model="ad",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        max_tokens=3,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "Hello, world"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert fake.record.requests[-1]["_path"] == "/v1/chat/completions"


def test_stream_without_usage_request_hides_the_usage_chunk(served, fake: FakeServer) -> None:
    c = client(served)
    chunks = list(c.completions.create(model="chatglm3-ad", prompt="x", stream=True))
    assert all(ch.choices for ch in chunks) and all(ch.usage is None for ch in chunks)
    assert fake.record.requests[-1]["stream_options"] == {"include_usage": True}


def test_openai_errors(served, fake: FakeServer) -> None:
    c = client(served)
    with pytest.raises(openai.NotFoundError) as nf:
        c.completions.create(model="nope", prompt="x")
    assert "not deployed" in nf.value.body["message"]  # type: ignore[index]
    with served.http() as h:
        r = h.post("/v1/chat/completions", json={"model": "chatglm3-ad"})
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "BadRequestError" and r.json()["error"]["code"] == 400
    fake.behaviour.fail_status = 400
    with pytest.raises(openai.BadRequestError) as bad:
        c.completions.create(model="chatglm3-ad", prompt="x")
    assert bad.value.body["message"] == "upstream says no"  # type: ignore[index]


def test_models_are_retrievable_by_id(served) -> None:
    c = client(served)
    listed = {m.id: m for m in c.models.list().data}
    assert set(listed) == {"ad", "chatglm3-ad"}
    for model_id, card in listed.items():
        assert c.models.retrieve(model_id) == card
    assert c.models.retrieve("ad").model_extra["root"] == "ad"
    with pytest.raises(openai.NotFoundError) as nf:
        c.models.retrieve("nope")
    assert nf.value.body == {  # OpenAI's error shape
        "message": "The model `nope` does not exist.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }


def test_a_key_sees_only_the_models_it_may_call(make_gateway, fake: FakeServer) -> None:
    gut = make_gateway(api_key_auth="on")
    gut.deploy("chatglm3-ad", vllm_deployment(fake.url, adapters={"ad": "/models/ad"}, default_adapter="ad"))
    made = gut.stub.CreateApiKey(
        pb.CreateApiKeyRequest(api_key_id="only-ad", api_key=pb.ApiKey(models=["ad"]))
    )
    c = openai.OpenAI(base_url=f"{gut.url}/v1", api_key=made.secret, max_retries=0)
    assert [m.id for m in c.models.list().data] == ["ad"]
    assert c.models.retrieve("ad").id == "ad"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("chatglm3-ad")


def test_tools_response_format_and_logprobs_reach_vllm_untouched(served, fake: FakeServer) -> None:
    """vLLM implements them: the gateway passes them on as sent and relays the answer."""
    c = client(served)
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    call = {"id": "call-1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    fake.behaviour.chat_message = {"role": "assistant", "content": None, "tool_calls": [call]}
    fields = {
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_logprobs": 2,
        "parallel_tool_calls": False,
    }
    out = c.chat.completions.create(
        model="chatglm3-ad", messages=[{"role": "user", "content": "hi"}], **fields
    )
    sent = fake.record.requests[-1]
    assert {k: sent[k] for k in fields} == fields
    calls = out.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.name == "get_weather"
    c.completions.create(model="chatglm3-ad", prompt=["a", "b"], n=2, logprobs=3, echo=True)
    sent = fake.record.requests[-1]
    assert (sent["prompt"], sent["n"], sent["logprobs"], sent["echo"]) == (["a", "b"], 2, 3, True)
