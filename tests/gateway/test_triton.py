"""Triton generate through the gateway, against a fake vLLM: the seed's request, streaming,
the vLLM backend's fields, and Triton's error shape."""

from __future__ import annotations

import json

from fake_openai import FakeServer

SEED_BODY = (
    '{"text_input": "hello", "stream": false, "sampling_parameters": '
    '"{\\"temperature\\": 0.7, \\"top_p\\": 0.95, \\"max_tokens\\": 1024}"}'
)


def sse(text: str) -> list[dict]:
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [json.loads(e[6:]) for e in events]


def test_seed_request_body(served, fake: FakeServer) -> None:
    with served.http() as c:
        r = c.post("/v2/models/chatglm3-ad/generate", content=SEED_BODY)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model_name": "chatglm3-ad",
        "model_version": "1",
        "text_output": "helloHello, world!",
    }
    sent = fake.record.requests[-1]
    assert sent["_path"] == "/v1/completions" and sent["prompt"] == "hello" and sent["stream"] is False
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.7, 0.95, 1024)
    assert sent["model"] == "ad"  # the deployment's default adapter
    assert sent["_auth"] == "Bearer upstream-secret"


def test_versions_and_exclude_input_and_return_flags(served, fake: FakeServer) -> None:
    body = {
        "text_input": "hi",
        "sampling_parameters": {"max_tokens": 2, "lora_name": "ad"},  # an object: accepted as an extension
        "exclude_input_in_output": True,
        "return_finish_reason": True,
        "return_num_input_tokens": True,
        "return_num_output_tokens": True,
        "return_cumulative_logprob": True,
        "id": "req-7",
    }
    with served.http() as c:
        r = c.post("/v2/models/chatglm3-ad/versions/1/generate", json=body)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "id": "req-7",
            "model_name": "chatglm3-ad",
            "model_version": "1",
            "text_output": "Hello,",
            "finish_reason": "length",
            "num_input_tokens": 3,
            "num_output_tokens": 2,
            "cumulative_logprob": -1.0,
        }
        assert c.post("/v2/models/chatglm3-ad/versions/2/generate", json=body).status_code == 404


def test_parameters_without_sampling_parameters_and_default_max_tokens(served, fake: FakeServer) -> None:
    with served.http() as c:
        r = c.post(
            "/v2/models/chatglm3-ad/generate",
            json={"text_input": "x", "parameters": {"temperature": 0.1}, "top_k": 5},
        )
    assert r.status_code == 200
    sent = fake.record.requests[-1]
    assert sent["temperature"] == 0.1 and sent["top_k"] == 5 and sent["max_tokens"] == 16


def test_generate_stream_sends_deltas_without_done(served, fake: FakeServer) -> None:
    with (
        served.http() as c,
        c.stream(
            "POST",
            "/v2/models/chatglm3-ad/generate_stream",
            json={"text_input": "hello", "stream": True, "sampling_parameters": '{"max_tokens": 4}'},
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        text = r.read().decode()
    assert "[DONE]" not in text
    events = sse(text)
    assert [e["text_output"] for e in events] == ["Hello", ",", " world", "!"]
    assert all(e["model_name"] == "chatglm3-ad" and e["model_version"] == "1" for e in events)


def test_generate_stream_without_stream_flag_is_one_event_with_the_prompt(served) -> None:
    with served.http() as c:
        r = c.post("/v2/models/chatglm3-ad/generate_stream", json={"text_input": "hey "})
    assert sse(r.text) == [
        {"model_name": "chatglm3-ad", "model_version": "1", "text_output": "hey Hello, world!"}
    ]


def test_triton_errors(served, fake: FakeServer) -> None:
    with served.http() as c:
        bad = c.post("/v2/models/chatglm3-ad/generate", json={"stream": False})
        assert bad.status_code == 400 and "text_input" in bad.json()["error"]
        assert c.post("/v2/models/nope/generate", json={"text_input": "x"}).status_code == 404
        one = c.post("/v2/models/chatglm3-ad/generate", json={"text_input": "x", "stream": True})
        assert one.status_code == 400 and "exactly 1 response" in one.json()["error"]
        bad_json = c.post(
            "/v2/models/chatglm3-ad/generate", json={"text_input": "x", "sampling_parameters": "{"}
        )
        assert bad_json.status_code == 400 and "sampling_parameters" in bad_json.json()["error"]
        excl = c.post(
            "/v2/models/chatglm3-ad/generate_stream",
            json={"text_input": "x", "stream": True, "exclude_input_in_output": False},
        )
        assert excl.status_code == 400
        other = c.post("/v2/models/chatglm3-ad/generate", json={"text_input": "x", "lora_name": "nope"})
        assert other.status_code == 404
        fake.behaviour.fail_status = 400
        up = c.post("/v2/models/chatglm3-ad/generate", json={"text_input": "x"})
        assert up.status_code == 400 and up.json() == {"error": "upstream says no"}


def test_kserve_health_and_metadata(served) -> None:
    with served.http() as c:
        live = c.get("/v2/health/live")
        assert live.status_code == 200 and live.content == b""
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/v2/models/chatglm3-ad/ready").status_code == 200
        assert c.get("/v2/models/ad/versions/1/ready").status_code == 200
        assert c.get("/v2/models/nope/ready").status_code == 404
        meta = c.get("/v2/models/chatglm3-ad").json()
        assert meta["name"] == "chatglm3-ad" and meta["versions"] == ["1"]
        assert {"name": "text_input", "datatype": "BYTES", "shape": [1]} in meta["inputs"]
        assert c.get("/v2").json()["extensions"] == ["generate"]
        assert c.get("/healthz").status_code == 200
