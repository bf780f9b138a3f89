"""A client that leaves a stream midway is an abort in the metrics: its request counted with code
499, the tokens it was sent counted as generated, nothing left in flight, and the replica's work
cancelled."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fake_openai import FakeServer
from gatewayhelpers import vllm_deployment
from tunelab.gateway.v1 import gateway_pb2 as pb


def samples(gut) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with gut.http() as c:
        text = c.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize(
    ("path", "body", "route"),
    [
        (
            "/v1/chat/completions",
            {"model": "ad", "messages": [{"role": "user", "content": "left"}], "stream": True},
            "openai_chat",
        ),
        ("/v2/models/ad/generate_stream", {"text_input": "left", "stream": True}, "triton_generate_stream"),
    ],
)
def test_an_aborted_stream_is_counted(make_gateway, fake: FakeServer, path, body, route) -> None:
    gut = make_gateway(api_key_auth="off")
    d = gut.deploy("chatglm3-ad", vllm_deployment(fake.url, adapters={"ad": "/models/ad"}))
    assert d.state == pb.Deployment.STATE_READY, d.error
    fake.behaviour.stall_after_chunks = 2  # two tokens, then the replica is still generating
    with gut.http() as c, c.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        chunks = 0
        for line in r.iter_lines():
            chunks += line.startswith("data: {")
            if chunks == 2:
                break  # and close the connection

    aborted = ("tunelab_gateway_requests_total", (("code", "499"), ("model", "ad"), ("route", route)))
    deadline = time.monotonic() + 30
    while (seen := samples(gut)).get(aborted) != 1.0:
        assert time.monotonic() < deadline, {k: v for k, v in seen.items() if "requests" in k[0]}
        time.sleep(0.1)
    assert seen[("tunelab_gateway_generation_tokens_total", (("model", "ad"),))] == 2.0
    assert seen[("tunelab_gateway_requests_in_flight", (("model", "ad"),))] == 0.0
    assert not [k for k in seen if k[0] == "tunelab_gateway_requests_total" and k != aborted]
    deadline = time.monotonic() + 30
    while not fake.record.cancelled:
        assert time.monotonic() < deadline, "the replica's generation was not cancelled"
        time.sleep(0.05)
