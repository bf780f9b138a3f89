"""The OpenAI routes through the gateway, called with the official `openai` client."""

from __future__ import annotations

import openai
import pytest

from fake_openai import FakeServer


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
