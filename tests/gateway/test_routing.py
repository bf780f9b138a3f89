"""Replicas, retries before the first byte, in-flight limits, timeouts, and a client that leaves."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time

from fake_openai import Behaviour, FakeServer
from gatewayhelpers import vllm_deployment
from tunelab.gateway.routing import PhaseTimeouts, Route, Router
from tunelab.gateway.v1 import gateway_pb2 as pb


def test_least_outstanding_requests() -> None:
    router = Router()
    t = PhaseTimeouts(1, 1, 1, 1)
    route = Route(
        "m",
        "d",
        "m",
        ("http://a:1", "http://b:1", "http://c:1"),
        frozenset({"http://a:1", "http://b:1"}),
        "READY",
        10,
        t,
    )
    first = router.pick(route)
    first.in_flight += 2
    second = router.pick(route)
    assert {first.url, second.url} == {"http://a:1", "http://b:1"}
    second.in_flight += 3
    assert router.pick(route) is first  # 2 < 3; c is unhealthy


def test_retries_another_replica_before_the_first_byte(make_gateway) -> None:
    good, doomed = FakeServer().start(), FakeServer().start()
    try:
        gut = make_gateway(health_interval_s=60)
        d = gut.deploy("two", vllm_deployment(good.url, doomed.url, model_name="m"))
        assert d.state == pb.Deployment.STATE_READY and len(d.replica_statuses) == 2
        doomed.stop()  # still marked healthy: the next check is a minute away
        with gut.http() as c:
            codes = [
                c.post("/v1/completions", json={"model": "base-model", "prompt": "x"}).status_code
                for _ in range(6)
            ]
            assert set(codes) == {404}  # "base-model" is the upstream's name, not a served one
            codes = [
                c.post("/v1/completions", json={"model": "m", "prompt": str(i)}).status_code for i in range(6)
            ]
        assert codes == [200] * 6
        assert len(good.record.requests) == 6
    finally:
        good.stop()


def test_in_flight_limit_answers_429_with_retry_after(make_gateway, fake: FakeServer) -> None:
    gut = make_gateway()
    gut.deploy("small", vllm_deployment(fake.url, model_name="m", max_in_flight=1))
    fake.behaviour.reply_delay_s = 1.5
    results: list[int] = []
    with gut.http() as c:
        slow = threading.Thread(
            target=lambda: results.append(
                c.post("/v1/completions", json={"model": "m", "prompt": "a"}).status_code
            )
        )
        slow.start()
        time.sleep(0.4)
        r = c.post("/v2/models/m/generate", json={"text_input": "b"})
        slow.join()
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and "limit" in r.json()["error"]
    assert results == [200]


def test_first_token_and_total_timeouts(make_gateway, fake: FakeServer) -> None:
    gut = make_gateway()
    timeouts = pb.Timeouts()
    timeouts.first_token.FromMilliseconds(300)
    timeouts.total.FromMilliseconds(600)
    gut.deploy("t", vllm_deployment(fake.url, model_name="m", timeouts=timeouts))
    with gut.http() as c:
        fake.behaviour.first_token_delay_s = 2
        r = c.post("/v2/models/m/generate_stream", json={"text_input": "x", "stream": True})
        assert r.status_code == 200 and "stopped sending" in json.loads(r.text.split("data: ")[1])["error"]
        fake.behaviour.reply_delay_s = 2
        r = c.post("/v1/completions", json={"model": "m", "prompt": "x"})
        assert r.status_code == 504 and r.json()["error"]["type"] == "TimeoutError"


def _send_and_leave(port: int, path: str, body: dict) -> None:
    raw = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(raw)}\r\n\r\n".encode()
            + raw
        )
        time.sleep(0.5)


def test_client_disconnect_cancels_the_upstream_request(served, fake: FakeServer) -> None:
    port = served.gateway.http.port
    fake.behaviour.reply_delay_s = 5
    _send_and_leave(port, "/v2/models/chatglm3-ad/generate", {"text_input": "plain"})
    fake.behaviour.first_token_delay_s = 5
    _send_and_leave(port, "/v1/completions", {"model": "ad", "prompt": "streamed", "stream": True})
    deadline = time.monotonic() + 4  # far less than the 5 s the fake would take to answer
    while len(fake.record.cancelled) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(fake.record.cancelled) == ["plain", "streamed"]
    assert fake.record.completed == []
    assert served.gateway.router.deployment_in_flight["chatglm3-ad"] == 0


def test_streamed_chunks_are_not_buffered(served, fake: FakeServer) -> None:
    fake.behaviour.chunk_delay_s = 0.3
    arrivals = []
    with (
        served.http() as c,
        c.stream("POST", "/v1/completions", json={"model": "ad", "prompt": "x", "stream": True}) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == 4 and min(gaps) > 0.2  # each chunk left the gateway as it came


def test_unhealthy_upstream_makes_the_deployment_degraded_then_ready(make_gateway) -> None:
    a, b = FakeServer().start(), FakeServer(Behaviour(healthy=False)).start()
    try:
        gut = make_gateway()
        d = gut.deploy("half", vllm_deployment(a.url, b.url, model_name="m"))
        assert d.state == pb.Deployment.STATE_DEGRADED and "/health answered 503" in d.error
        b.behaviour.healthy = True
        deadline = time.monotonic() + 10
        while (
            gut.stub.GetDeployment(pb.GetDeploymentRequest(name="deployments/half")).deployment.state
            != pb.Deployment.STATE_READY
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        a.stop()
        b.stop()
