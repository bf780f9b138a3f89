"""An API key past its expire_time is refused on every protected route, while a key that has not
expired yet and a key without an expiry still work.

The expired key is written to the gateway's database the way another gateway sharing it would
(an expire_time already in the past cannot be created through the API), then read back by the
same reload the gateway runs every few seconds, so no test waits for a clock to pass a deadline.
"""

from __future__ import annotations

import hashlib
import time

from tunelab.gateway.apikeys import SECRET_PREFIX
from tunelab.gateway.registry import ApiKeyRecord
from tunelab.gateway.v1 import gateway_pb2 as pb

ROUTES = (
    ("POST", "/v1/completions", {"model": "chatglm3-ad", "prompt": "hi", "max_tokens": 2}),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "chatglm3-ad", "messages": [{"role": "user", "content": "x"}]},
    ),
    ("POST", "/v2/models/chatglm3-ad/generate", {"text_input": "hi"}),
    ("GET", "/v1/models", None),
)


def add_key(gut, key_id: str, expire_time: float | None) -> str:
    """Stores a key in the gateway's database directly and has the gateway read its keys again."""
    secret = f"{SECRET_PREFIX}{key_id}-{'x' * 40}"
    record = ApiKeyRecord(
        id=key_id,
        display_name=key_id,
        secret_prefix=secret[:7],
        secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
        models=(),
        create_time=time.time() - 7200,
        expire_time=expire_time,
    )
    gut.gateway.keys.registry.add_key(record)
    gut.gateway.keys.reload()
    return secret


def test_an_expired_key_is_refused_and_live_keys_are_not(make_gateway, fake) -> None:
    from gatewayhelpers import vllm_deployment

    gut = make_gateway(api_key_auth="on")
    gut.deploy("chatglm3-ad", vllm_deployment(fake.url))
    now = time.time()
    expired = add_key(gut, "expired", now - 60)
    at_its_limit = add_key(gut, "at-its-limit", now)  # expire_time is the first instant it is invalid
    live = add_key(gut, "live", now + 3600)
    forever = add_key(gut, "forever", None)

    with gut.http() as client:
        for method, path, body in ROUTES:
            for secret, key_id in ((expired, "expired"), (at_its_limit, "at-its-limit")):
                r = client.request(method, path, json=body, headers={"authorization": f"Bearer {secret}"})
                assert r.status_code == 401, (path, key_id, r.text)
                assert f"'{key_id}' expired" in r.text, (path, r.text)
            for secret in (live, forever):
                r = client.request(method, path, json=body, headers={"authorization": f"Bearer {secret}"})
                assert r.status_code == 200, (path, r.text)

    # The listing still shows the expired key, with its expire_time, for its owner to clean up.
    listed = {k.name: k for k in gut.stub.ListApiKeys(pb.ListApiKeysRequest()).api_keys}
    assert listed["apiKeys/expired"].expire_time.seconds == int(now - 60)
    assert not listed["apiKeys/forever"].HasField("expire_time")
