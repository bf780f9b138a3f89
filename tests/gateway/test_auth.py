"""API keys: every route the app has is enumerated and called without, with a wrong and with a
right key; health and metrics are open or closed by setting."""

from __future__ import annotations

import re

import pytest
from starlette.routing import Route

from tunelab.gateway.api.auth import DOCS, is_open
from tunelab.gateway.v1 import gateway_pb2 as pb


def walk(routes: list) -> list[Route]:
    """Every route, including those of included routers."""
    found: list[Route] = []
    for r in routes:
        if isinstance(r, Route):
            found.append(r)
        elif hasattr(r, "original_router"):  # FastAPI's included router
            found += walk(r.original_router.routes)
    return found


def concrete(path: str) -> str:
    """``path`` with its parameters filled in (a model, version 1)."""
    return re.sub(r"\{version\}", "1", re.sub(r"\{model(_id)?(:path)?\}", "chatglm3-ad", path))


def routes(app) -> list[tuple[str, str]]:
    """(method, concrete path) for every route of the app, path parameters filled in."""
    found = []
    for r in walk(app.routes):
        path = concrete(r.path)
        found += [(m, path) for m in sorted(r.methods or ()) if m != "HEAD"]
    documented = {concrete(p) for p in app.openapi()["paths"]}
    assert documented <= {p for _, p in found}
    return found


@pytest.mark.parametrize("open_health", [True, False])
def test_every_route_needs_a_key(make_gateway, fake, open_health: bool) -> None:
    gut = make_gateway(api_key_auth="on", open_health=open_health)
    app = gut.gateway.http.app
    with gut.http() as c:
        # No key exists yet: everything protected is refused, and the message says how to make one.
        r = c.post("/v1/completions", json={"model": "x", "prompt": "y"})
        assert r.status_code == 401 and "tunelab key create" in r.json()["error"]["message"]
    key = gut.stub.CreateApiKey(pb.CreateApiKeyRequest(api_key_id="ci", api_key=pb.ApiKey(display_name="CI")))
    assert key.secret.startswith("tl-") and key.api_key.secret_prefix == key.secret[:7]
    listed = gut.stub.ListApiKeys(pb.ListApiKeysRequest()).api_keys
    assert [k.name for k in listed] == ["apiKeys/ci"] and key.secret not in str(listed)
    assert len(routes(app)) >= 18
    with gut.http() as c:
        for method, path in routes(app):
            if path in DOCS:
                continue
            body = (
                {"json": {"model": "chatglm3-ad", "prompt": "x", "text_input": "x"}}
                if method == "POST"
                else {}
            )
            anonymous = c.request(method, path, **body)
            wrong = c.request(method, path, headers={"authorization": "Bearer tl-wrong"}, **body)
            right = c.request(method, path, headers={"authorization": f"Bearer {key.secret}"}, **body)
            if is_open(path, open_health):
                assert anonymous.status_code != 401, (method, path)
                continue
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            assert anonymous.headers["www-authenticate"] == "Bearer"
            assert wrong.status_code == 401, (method, path)
            assert right.status_code != 401, (method, path, right.text)
        assert c.get("/nowhere").status_code == 401  # unknown paths are not a way around it
    gut.stub.DeleteApiKey(pb.DeleteApiKeyRequest(name="apiKeys/ci"))
    with gut.http() as c:
        assert c.get("/v1/models", headers={"authorization": f"Bearer {key.secret}"}).status_code == 401


def test_key_limited_to_models(make_gateway, fake) -> None:
    from gatewayhelpers import vllm_deployment

    gut = make_gateway(api_key_auth="on")
    gut.deploy("d", vllm_deployment(fake.url, model_name="m"))
    key = gut.stub.CreateApiKey(
        pb.CreateApiKeyRequest(api_key_id="only-other", api_key=pb.ApiKey(models=["other"]))
    )
    auth = {"authorization": f"Bearer {key.secret}"}
    with gut.http() as c:
        r = c.post("/v2/models/m/generate", json={"text_input": "x"}, headers=auth)
        assert r.status_code == 403 and "may not call" in r.json()["error"]
        assert c.get("/v1/models", headers=auth).json()["data"] == []
    got = gut.stub.GetApiKey(pb.GetApiKeyRequest(name="apiKeys/only-other")).api_key
    assert got.last_used_time.seconds > 0 and list(got.models) == ["other"]


def _generate_calls(c, secret: str | None) -> list[tuple[str, int, object]]:
    """(route, status, body) of each generate route of model "m", with ``secret`` or without a key."""
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    calls = (
        ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 2}),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v2/models/m/generate", {"text_input": "hi"}),
    )
    answers = []
    for path, body in calls:
        r = c.post(path, json=body, headers=headers)
        answers.append((path, r.status_code, r.json()))
    return answers


def test_keys_are_required_by_default_and_a_deleted_one_is_refused_at_once(
    make_gateway, fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gatewayhelpers import vllm_deployment
    from tunelab.gateway.settings import GatewaySettings

    monkeypatch.delenv("TUNELAB_API_KEY_AUTH", raising=False)
    default = GatewaySettings().api_key_auth
    assert default == "on"
    gut = make_gateway(api_key_auth=default)
    gut.deploy("d", vllm_deployment(fake.url, model_name="m"))
    with gut.http() as c:
        # No key exists: refused, with OpenAI's error object on /v1 and Triton's on /v2.
        for path, status, body in _generate_calls(c, None):
            assert status == 401, (path, body)
            if path.startswith("/v1/"):
                assert body["error"]["type"] == "AuthenticationError", body  # type: ignore[index]
                assert "tunelab key create" in body["error"]["message"], body  # type: ignore[index]
            else:
                assert "tunelab key create" in body["error"], body  # type: ignore[index]
    key = gut.stub.CreateApiKey(pb.CreateApiKeyRequest(api_key_id="ci"))
    with gut.http() as c:
        assert [status for _, status, _ in _generate_calls(c, key.secret)] == [200, 200, 200]
        assert [status for _, status, _ in _generate_calls(c, None)] == [401, 401, 401]
        # Deleting the last key opens nothing: the deleted key and anonymous callers are refused.
        gut.stub.DeleteApiKey(pb.DeleteApiKeyRequest(name="apiKeys/ci"))
        assert [status for _, status, _ in _generate_calls(c, key.secret)] == [401, 401, 401]
        assert [status for _, status, _ in _generate_calls(c, None)] == [401, 401, 401]


def test_an_expired_key_is_refused(make_gateway, fake) -> None:
    import time

    from google.protobuf.timestamp_pb2 import Timestamp

    from gatewayhelpers import vllm_deployment

    gut = make_gateway(api_key_auth="on")
    gut.deploy("d", vllm_deployment(fake.url, model_name="m"))
    lasting = gut.stub.CreateApiKey(pb.CreateApiKeyRequest(api_key_id="lasting"))
    expires = time.time() + 3  # room for a slow machine to create it before then
    brief = gut.stub.CreateApiKey(
        pb.CreateApiKeyRequest(
            api_key_id="brief", api_key=pb.ApiKey(expire_time=Timestamp(seconds=int(expires) + 1))
        )
    )
    while time.time() <= int(expires) + 1.05:  # past its expire_time
        time.sleep(0.1)
    with gut.http() as c:
        answers = _generate_calls(c, brief.secret)
        assert [status for _, status, _ in answers] == [401, 401, 401], answers
        assert "'brief' expired" in answers[0][2]["error"]["message"]  # type: ignore[index]
        assert "'brief' expired" in answers[2][2]["error"]  # type: ignore[index]
        assert [status for _, status, _ in _generate_calls(c, lasting.secret)] == [200, 200, 200]


def test_a_key_deleted_through_another_gateway_is_refused(make_gateway, tmp_path) -> None:
    """Gateways sharing one state database: each reads the keys again every api_key_refresh_s."""
    import time

    shared = {"api_key_auth": "on", "data_dir": tmp_path / "shared", "api_key_refresh_s": 0.2}
    one, other = make_gateway(**shared), make_gateway(**shared)
    key = one.stub.CreateApiKey(pb.CreateApiKeyRequest(api_key_id="ci"))
    auth = {"authorization": f"Bearer {key.secret}"}

    def status_at(gut) -> int:
        with gut.http() as c:
            return c.get("/v1/models", headers=auth).status_code  # type: ignore[no-any-return]

    def wait_for(gut, status: int) -> None:
        deadline = time.monotonic() + 60
        while status_at(gut) != status:
            assert time.monotonic() < deadline, f"still not {status}"
            time.sleep(0.1)

    assert status_at(one) == 200
    wait_for(other, 200)
    one.stub.DeleteApiKey(pb.DeleteApiKeyRequest(name="apiKeys/ci"))
    assert status_at(one) == 401
    wait_for(other, 401)
