"""An embedded engine answers its gateway only: the gateway gives each engine process a random key in
its environment (never argv) and sends it; a direct call without it is refused."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from tunelab.gateway.v1 import gateway_pb2 as pb


def test_an_embedded_engine_refuses_callers_other_than_its_gateway(
    make_gateway, tiny_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, lora = tiny_model
    monkeypatch.setenv("TUNELAB_S3_SECRET_KEY", "a-storage-secret")  # the gateway's own settings
    gut = make_gateway()
    dep = pb.Deployment(
        model_name="tiny",
        base_model=pb.ModelSource(path=str(base)),
        adapters=[pb.LoraAdapter(name="tiny-ad", source=pb.ModelSource(path=str(lora)))],
        upstream=pb.Upstream(embedded=pb.EmbeddedUpstream(device="cpu", max_batch_size=2)),
    )
    d = gut.deploy("tiny", dep, timeout=180)
    assert d.state == pb.Deployment.STATE_READY, d.error
    engine_url = d.replica_statuses[0].url
    [engine] = gut.gateway.deployments._runtimes["tiny"].replicas.engines
    key = engine.api_key
    assert len(key) >= 32

    # Through the gateway: served (the gateway sends the engine's key).
    with gut.http() as c:
        r = c.post("/v1/completions", json={"model": "tiny-ad", "prompt": "hello", "max_tokens": 2})
        assert r.status_code == 200, r.text

    # Straight to the engine's port: refused without the key, on every route but /health.
    with httpx.Client(base_url=engine_url, timeout=60) as c:
        assert c.get("/health").status_code == 200
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
        assert c.post("/v1/completions", json=body).status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert c.get("/metrics").status_code == 401
        load = {"lora_name": "etc", "lora_path": "/etc"}
        assert c.post("/v1/load_lora_adapter", json=load).status_code == 401
        # With the key, paths outside the gateway's model store and the deployment's adapters: 400.
        auth = {"authorization": f"Bearer {key}"}
        refused = c.post("/v1/load_lora_adapter", json=load, headers=auth)
        assert refused.status_code == 400 and "/etc" in refused.text, refused.text
        escape = {"lora_name": "up", "lora_path": f"{lora}/../{Path(base).name}"}
        refused = c.post("/v1/load_lora_adapter", json=escape, headers=auth)
        assert refused.status_code == 400 and escape["lora_path"] in refused.text, refused.text
        assert c.get("/v1/models", headers=auth).status_code == 200

    # The key is in the engine's environment (readable by its user only), not on its command line;
    # the gateway's own TUNELAB_* settings are not passed on.
    proc = psutil.Process(engine.proc.pid)
    assert key not in " ".join(proc.cmdline())
    environ = proc.environ()
    assert environ["TUNELAB_ENGINE_API_KEY"] == key
    assert not [k for k in environ if k.startswith("TUNELAB_") and k != "TUNELAB_ENGINE_API_KEY"]
    gut.stub.DeleteDeployment(pb.DeleteDeploymentRequest(name="deployments/tiny"))
