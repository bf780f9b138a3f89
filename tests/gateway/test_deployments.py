"""GatewayService over gRPC: create/get/list/update/delete/watch, validation, vLLM adapter
loading (and the explanation when vLLM cannot load at runtime), and state kept across restarts."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from fake_openai import Behaviour, FakeServer
from gatewayhelpers import vllm_deployment
from tunelab.gateway.v1 import gateway_pb2 as pb


def test_crud_and_watch(served, fake: FakeServer) -> None:
    stub = served.stub
    got = stub.GetDeployment(pb.GetDeploymentRequest(name="deployments/chatglm3-ad")).deployment
    assert got.state == pb.Deployment.STATE_READY and got.ready_time.seconds > 0
    assert list(got.served_model_names) == ["chatglm3-ad", "ad"]
    assert got.upstream.vllm.api_key == ""  # write-only
    assert fake.record.loaded == {"ad": "/models/ad"}  # loaded through /v1/load_lora_adapter
    assert got.replica_statuses[0].healthy and "ad" in got.replica_statuses[0].models
    assert [d.name for d in stub.ListDeployments(pb.ListDeploymentsRequest()).deployments] == [
        "deployments/chatglm3-ad"
    ]
    with pytest.raises(grpc.RpcError) as dup:
        served.deploy("other", vllm_deployment(fake.url, model_name="ad"))
    assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS and "'ad'" in dup.value.details()
    with pytest.raises(grpc.RpcError) as bad:
        served.deploy("x", vllm_deployment("ftp://nowhere", model_name="y"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    upd = stub.UpdateDeployment(
        pb.UpdateDeploymentRequest(
            deployment=pb.Deployment(name="deployments/chatglm3-ad", max_in_flight=7, description="tuned"),
            update_mask=FieldMask(paths=["max_in_flight", "description"]),
        )
    ).deployment
    assert upd.max_in_flight == 7 and upd.description == "tuned" and upd.model_name == "chatglm3-ad"
    assert served.wait("chatglm3-ad").state == pb.Deployment.STATE_READY
    stub.DeleteDeployment(pb.DeleteDeploymentRequest(name="deployments/chatglm3-ad"))
    assert "ad" not in fake.behaviour.models  # unloaded from vLLM
    with pytest.raises(grpc.RpcError) as gone:
        stub.GetDeployment(pb.GetDeploymentRequest(name="deployments/chatglm3-ad"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_vllm_without_runtime_lora_explains_lora_modules(make_gateway) -> None:
    fake = FakeServer(Behaviour(runtime_lora=False)).start()
    try:
        gut = make_gateway()
        d = gut.deploy("nolora", vllm_deployment(fake.url, adapters={"sql": "/m/sql"}, model_name="m"))
        assert d.state == pb.Deployment.STATE_FAILED
        assert "--lora-modules sql=/m/sql" in d.error and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in d.error
        wrong = gut.deploy(
            "wrongbase",
            pb.Deployment(
                model_name="w",
                base_model=pb.ModelSource(path="THUDM/chatglm3-6b"),
                upstream=pb.Upstream(vllm=pb.VllmUpstream(base_urls=[fake.url])),
            ),
        )
        assert wrong.state == pb.Deployment.STATE_FAILED and "vllm serve THUDM/chatglm3-6b" in wrong.error
    finally:
        fake.stop()


def test_a_vllm_server_that_is_not_up_yet_is_waited_for(make_gateway, tmp_path) -> None:
    """A stack restarted as a whole: the gateway comes back before its vLLM servers do. Their
    deployment waits for them (DEGRADED past the load timeout, checked on), never FAILED."""
    fake = FakeServer().start()
    first = make_gateway(data_dir=tmp_path / "state")
    assert first.deploy("later", vllm_deployment(fake.url, model_name="m")).state == pb.Deployment.STATE_READY
    first.gateway.stop(0.2)
    fake.stop()
    second = make_gateway(data_dir=tmp_path / "state", load_timeout_s=1.0)
    waiting = second.wait("later")
    assert waiting.state == pb.Deployment.STATE_DEGRADED, waiting.error
    assert fake.url in waiting.error
    back = FakeServer(port=fake.port).start()
    try:
        deadline = time.monotonic() + 60
        name = pb.GetDeploymentRequest(name="deployments/later")
        while second.stub.GetDeployment(name).deployment.state != pb.Deployment.STATE_READY:
            assert time.monotonic() < deadline, "the deployment did not come back"
            time.sleep(0.2)
        with second.http() as c:
            assert c.post("/v2/models/m/generate", json={"text_input": "x"}).status_code == 200
    finally:
        back.stop()


def test_deployments_survive_a_restart(make_gateway, fake: FakeServer, tmp_path) -> None:
    first = make_gateway(data_dir=tmp_path / "state")
    first.deploy("keep", vllm_deployment(fake.url, model_name="m"))
    first.gateway.stop(0.2)
    second = make_gateway(data_dir=tmp_path / "state")
    assert second.wait("keep").state == pb.Deployment.STATE_READY
    with second.http() as c:
        assert c.post("/v2/models/m/generate", json={"text_input": "x"}).status_code == 200
