"""Bodies the gateway cannot pass on answer 400 in each route's error shape (not 500), and KServe
v2 knows only the model version the gateway serves."""

from __future__ import annotations

import pytest

from fake_openai import FakeServer

DEEP = "[" * 1000 + "]" * 1000
LONE_SURROGATE = '"\\ud800"'

OPENAI_BODIES = {
    "deep body": DEEP,
    "deep messages": '{"model": "chatglm3-ad", "messages": ' + DEEP + "}",
    "lone surrogate": '{"model": "chatglm3-ad", "messages": [{"role": "user", "content": '
    + LONE_SURROGATE
    + "}]}",
}
TRITON_BODIES = {
    "deep body": DEEP,
    "deep parameter": '{"text_input": "hi", "top_k": ' + DEEP + "}",
    "lone surrogate": '{"text_input": ' + LONE_SURROGATE + "}",
    "lone surrogate in sampling_parameters": (
        '{"text_input": "hi", "sampling_parameters": "{\\"stop\\": \\"\\\\ud800\\"}"}'
    ),
}


def _reason(name: str) -> str:
    return "surrogate" if "surrogate" in name else "nested deeper"


@pytest.mark.parametrize("name", OPENAI_BODIES)
def test_openai_answers_bad_json_with_400(served, fake: FakeServer, name: str) -> None:
    with served.http() as c:
        r = c.post("/v1/chat/completions", content=OPENAI_BODIES[name])
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400
    assert _reason(name) in error["message"]
    assert fake.record.requests == []


@pytest.mark.parametrize("name", TRITON_BODIES)
@pytest.mark.parametrize(
    "path", ["/v2/models/chatglm3-ad/generate", "/v2/models/chatglm3-ad/generate_stream"]
)
def test_triton_answers_bad_json_with_400(served, fake: FakeServer, name: str, path: str) -> None:
    with served.http() as c:
        r = c.post(path, content=TRITON_BODIES[name])
    assert r.status_code == 400, r.text
    assert _reason(name) in r.json()["error"]
    assert fake.record.requests == []


def test_escaped_surrogate_pairs_and_moderate_nesting_still_pass(served, fake: FakeServer) -> None:
    nested = "[" * 20 + "1" + "]" * 20
    body = '{"model": "chatglm3-ad", "prompt": "\\ud83d\\ude00", "extra": ' + nested + "}"
    with served.http() as c:
        r = c.post("/v1/completions", content=body)
    assert r.status_code == 200, r.text
    assert fake.record.requests[-1]["prompt"] == "\U0001f600"


def test_kserve_unknown_versions_are_not_found(served) -> None:
    with served.http() as c:
        assert c.get("/v2/models/chatglm3-ad/versions/1/ready").status_code == 200
        assert c.get("/v2/models/chatglm3-ad/versions/1").json()["versions"] == ["1"]
        for path in (
            "/v2/models/chatglm3-ad/versions/99/ready",
            "/v2/models/chatglm3-ad/versions/99",
            "/v2/models/ad/versions/2/ready",
        ):
            r = c.get(path)
            assert r.status_code == 404, path
            assert "no version '" in r.json()["error"]
        r = c.post("/v2/models/chatglm3-ad/versions/99/generate", json={"text_input": "hi"})
        assert r.status_code == 404 and "no version '99'" in r.json()["error"]
