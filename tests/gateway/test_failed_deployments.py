"""A deployment that FAILED: its message is one plain line (a base that is no model names the path
and what is missing, never a transformers traceback), and its names are free for another
deployment, also after a restart of the gateway."""

from __future__ import annotations

import json

from fake_openai import FakeServer
from gatewayhelpers import vllm_deployment
from tunelab.gateway.v1 import gateway_pb2 as pb


def embedded(base: str, **fields) -> pb.Deployment:
    return pb.Deployment(
        base_model=pb.ModelSource(path=base),
        upstream=pb.Upstream(embedded=pb.EmbeddedUpstream(device="cpu")),
        **fields,
    )


def test_a_base_that_is_not_a_model_fails_plainly(make_gateway, tmp_path) -> None:
    notes, bare = tmp_path / "notes", tmp_path / "bare"
    notes.mkdir()
    (notes / "README.md").write_text("not a model")
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"hidden_size": 8}))
    gut = make_gateway()

    d = gut.deploy("notes", embedded(str(notes)))
    assert d.state == pb.Deployment.STATE_FAILED
    assert d.error.startswith(f"the base model {notes} is not a model: it has no config.json"), d.error
    d = gut.deploy("bare", embedded(str(bare)))
    assert d.state == pb.Deployment.STATE_FAILED and "config.json has no model_type" in d.error, d.error
    for error in (gut.wait("notes").error, d.error):
        assert "\n" not in error and "Traceback" not in error


def test_a_failed_deployment_frees_its_names(make_gateway, fake: FakeServer, tmp_path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    first = make_gateway(data_dir=tmp_path / "state")
    failed = first.deploy(
        "old",
        embedded(
            str(notes),
            model_name="chatglm3-ad",
            adapters=[pb.LoraAdapter(name="ad", source=pb.ModelSource(path="/models/ad"))],
        ),
    )
    assert failed.state == pb.Deployment.STATE_FAILED

    taken = first.deploy("new", vllm_deployment(fake.url, adapters={"ad": "/models/ad"}))
    assert taken.state == pb.Deployment.STATE_READY, taken.error
    assert list(taken.served_model_names) == ["chatglm3-ad", "ad"]
    with first.http() as c:
        assert c.post("/v2/models/ad/generate", json={"text_input": "x"}).status_code == 200

    first.gateway.stop(0.2)
    second = make_gateway(data_dir=tmp_path / "state")
    assert second.wait("new").state == pb.Deployment.STATE_READY
    old = second.stub.GetDeployment(pb.GetDeploymentRequest(name="deployments/old")).deployment
    assert old.state == pb.Deployment.STATE_FAILED and "now served by deployment 'new'" in old.error
