"""Limits on one request through the gateway: a body over ``max_body_bytes`` is refused 413 in the
error shape of its route (before it is read where its Content-Length says so, counted as it arrives
where it has none), and the embedded engine's 400 for a prompt that does not fit the model's
context reaches the client unchanged."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

from test_embedded import embedded

from tunelab.gateway.api.bodylimit import DEFAULT_MAX_BODY_BYTES
from tunelab.gateway.v1 import gateway_pb2 as pb

TOO_BIG = DEFAULT_MAX_BODY_BYTES + 1


def test_an_openai_body_over_the_limit_is_413(served) -> None:
    body = {"model": "chatglm3-ad", "prompt": "x" * TOO_BIG, "max_tokens": 1}
    with served.http() as c:
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 413
        error = r.json()["error"]
        assert error["code"] == 413 and error["type"] == "BadRequestError"
        assert str(DEFAULT_MAX_BODY_BYTES) in error["message"]
        ok = c.post("/v1/completions", json={"model": "chatglm3-ad", "prompt": "hi", "max_tokens": 1})
        assert ok.status_code == 200, ok.text


def test_a_triton_body_over_the_limit_is_413(served) -> None:
    body = {"text_input": "x" * TOO_BIG, "max_tokens": 1}
    with served.http() as c:
        r = c.post("/v2/models/chatglm3-ad/generate", json=body)
    assert r.status_code == 413
    assert isinstance(r.json()["error"], str) and str(DEFAULT_MAX_BODY_BYTES) in r.json()["error"]


def test_a_chunked_body_is_counted_as_it_arrives(served) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "chatglm3-ad", "messages": [{"role": "user", "content": "'
        for _ in range(5):
            yield b"x" * (DEFAULT_MAX_BODY_BYTES // 4)
        yield b'"}]}'

    with served.http() as c:
        r = c.post("/v1/chat/completions", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == 413


def test_a_declared_length_over_the_limit_is_refused_before_the_body(served) -> None:
    parts = urlsplit(served.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as s:
        s.sendall(
            f"POST /v1/completions HTTP/1.1\r\nhost: {parts.netloc}\r\ncontent-type: application/json\r\n"
            f"content-length: {50 * 1024 * 1024}\r\n\r\n".encode()
        )
        assert s.makefile("rb").readline().startswith(b"HTTP/1.1 413")


def test_the_engines_context_errors_pass_through(make_gateway, tiny_model) -> None:
    base, lora = tiny_model
    gut = make_gateway()
    d = gut.deploy("tiny", embedded(str(base), str(lora)), timeout=180)
    assert d.state == pb.Deployment.STATE_READY, d.error
    with gut.http() as c:
        long = c.post("/v1/completions", json={"model": "tiny", "prompt": [5] * 60_000, "max_tokens": 10})
        assert long.status_code == 400
        assert long.json() == {
            "error": {
                "message": "This model's maximum context length is 2048 tokens. However, you requested "
                "60010 tokens (60000 in the messages, 10 in the completion). Please reduce the length of "
                "the messages or completion.",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        }
        huge = c.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 10_000_000})
        assert huge.status_code == 400
        assert "10000000 in the completion" in huge.json()["error"]["message"]
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000_000}
        r = c.post("/v1/chat/completions", json=chat)
        assert r.status_code == 400 and "maximum context length is 2048" in r.json()["error"]["message"]
        triton = {"text_input": "hello", "sampling_parameters": json.dumps({"max_tokens": 10_000_000})}
        r = c.post("/v2/models/tiny/generate", json=triton)
        assert r.status_code == 400 and "maximum context length is 2048" in r.json()["error"]
        ok = c.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 2})
        assert ok.status_code == 200, ok.text
    gut.stub.DeleteDeployment(pb.DeleteDeploymentRequest(name="deployments/tiny"))
