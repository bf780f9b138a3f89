"""The engine's limits on one request, as vLLM answers them: a prompt longer than the model's
context, or one whose max_tokens would run past it, is refused 400 with vLLM's message; a body over
the engine's limit is refused 413, before it is read where its Content-Length says so."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from support import serve_in_thread
from tunelab.engine.app import build_app
from tunelab.engine.batcher import Batcher
from tunelab.engine.model import ServedModel

BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServedModel]]:
    from tunelab.recipes.tinymodel import build_tiny_model

    base = build_tiny_model(tmp_path_factory.mktemp("limits"), "hello world\nthe quick brown fox\n" * 20)
    model = ServedModel(str(base), "tiny")
    batcher = Batcher(model, max_batch_size=4, batch_wait_s=0.01)
    batcher.start()
    with serve_in_thread(build_app(model, batcher, max_body_bytes=BODY_LIMIT)) as url:
        yield url, model
    batcher.stop()


def test_context_is_read_from_the_config(engine) -> None:
    _, model = engine
    assert model.max_model_len == 2048  # the tiny Llama's max_position_embeddings


def test_a_prompt_longer_than_the_context_is_refused_like_vllm(engine) -> None:
    url, _ = engine
    body = {"model": "tiny", "prompt": [5] * 3000, "max_tokens": 10}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": "This model's maximum context length is 2048 tokens. However, you requested 3010 tokens "
        "(3000 in the messages, 10 in the completion). Please reduce the length of the messages or "
        "completion.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hello world " * 3000}]}
    r = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert message.startswith("This model's maximum context length is 2048 tokens. However, you requested")
    assert "Please reduce the length of the messages" in message


def test_max_tokens_is_bounded_by_the_context(engine) -> None:
    url, _ = engine
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 10_000_000}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 400
    assert "maximum context length is 2048 tokens" in r.json()["error"]["message"]
    assert "in the messages, 10000000 in the completion)" in r.json()["error"]["message"]
    # Exactly the context fits.
    fits = {"model": "tiny", "prompt": [5] * 2046, "max_tokens": 2, "temperature": 0}
    r = httpx.post(f"{url}/v1/completions", json=fits, timeout=60)
    assert r.status_code == 200, r.text
    # Without max_tokens the completion gets what is left of the context.
    rest = {"model": "tiny", "prompt": [5] * 2045, "temperature": 0}
    r = httpx.post(f"{url}/v1/completions", json=rest, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 3


def test_a_body_over_the_limit_is_refused_413(engine) -> None:
    url, _ = engine
    big = {"model": "tiny", "prompt": "x" * BODY_LIMIT, "max_tokens": 1}
    r = httpx.post(f"{url}/v1/completions", json=big, timeout=60)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == 413 and str(BODY_LIMIT) in r.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(8):
            yield b"x" * (BODY_LIMIT // 4)
        yield b'"}'

    r = httpx.post(f"{url}/v1/completions", content=chunks(), timeout=60)
    assert r.status_code == 413
    # Still serving.
    ok = httpx.post(
        f"{url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 1}, timeout=60
    )
    assert ok.status_code == 200


def test_a_declared_length_over_the_limit_is_refused_before_the_body(engine) -> None:
    url, _ = engine
    status = declared_only(url, "/v1/completions", 50 * 1024 * 1024)
    assert status.startswith(b"HTTP/1.1 413")


def declared_only(url: str, path: str, length: int) -> bytes:
    """The status line answered to a request that declares ``length`` bytes and sends none of them."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nhost: {parts.netloc}\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\n\r\n".encode()
        )
        return s.makefile("rb").readline()
