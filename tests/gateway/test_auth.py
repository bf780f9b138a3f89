"""API keys: every route the app has is enumerated and called without, with a wrong and with a
right key; health and metrics are open or closed by setting."""

from __future__ import annotations

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


def routes(app) -> list[tuple[str, str]]:
    """(method, concrete path) for every route of the app, path parameters filled in."""
    found = []
    for r in walk(app.routes):
        path = r.path.replace("{model}", "chatglm3-ad").replace("{version}", "1")
        found += [(m, path) for m in sorted(r.methods or ()) if m != "HEAD"]
    documented = {
        p.replace("{model}", "chatglm3-ad").replace("{version}", "1") for p in app.openapi()["paths"]
    }
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
