"""The gateway with the embedded engine (started by the gateway as `python -m tunelab.engine`) on
a tiny model built here, with a LoRA adapter: Triton generate, OpenAI chat streaming through the
official client, adapters by name, and a deployment loaded from a dataset version."""

from __future__ import annotations

import openai

from tunelab.gateway.v1 import gateway_pb2 as pb


def embedded(base: str, lora: str, **fields) -> pb.Deployment:
    return pb.Deployment(
        model_name=fields.pop("model_name", "tiny"),
        base_model=pb.ModelSource(path=base),
        adapters=[pb.LoraAdapter(name="tiny-ad", source=pb.ModelSource(path=lora))],
        upstream=pb.Upstream(embedded=pb.EmbeddedUpstream(device="cpu", max_batch_size=4)),
        **fields,
    )


def test_embedded_engine_end_to_end(make_gateway, tiny_model) -> None:
    base, lora = tiny_model
    gut = make_gateway()
    d = gut.deploy("tiny", embedded(str(base), str(lora)), timeout=180)
    assert d.state == pb.Deployment.STATE_READY, d.error
    assert list(d.served_model_names) == ["tiny", "tiny-ad"]
    assert sorted(d.replica_statuses[0].models) == ["tiny", "tiny-ad"]
    with gut.http() as c:
        seed = c.post(
            "/v2/models/tiny/generate",
            content='{"text_input": "hello", "stream": false, '
            '"sampling_parameters": "{\\"temperature\\": 0.7, \\"top_p\\": 0.95, \\"max_tokens\\": 8}"}',
        )
        assert seed.status_code == 200, seed.text
        assert seed.json()["text_output"].startswith("hello") and seed.json()["model_name"] == "tiny"
        greedy = {
            "text_input": "the quick",
            "sampling_parameters": '{"temperature": 0, "max_tokens": 6}',
            "exclude_input_in_output": True,
            "return_num_output_tokens": True,
        }
        plain = c.post("/v2/models/tiny/generate", json=greedy).json()
        adapted = c.post("/v2/models/tiny/generate", json={**greedy, "lora_name": "tiny-ad"}).json()
        assert plain["num_output_tokens"] == 6
        assert plain["text_output"] != adapted["text_output"]  # the adapter changes the answer
    client = openai.OpenAI(base_url=f"{gut.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="tiny-ad",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 5
    assert chunks[-2].choices[0].finish_reason in ("length", "stop")
    done = client.completions.create(model="tiny", prompt="hello", max_tokens=3, temperature=0)
    assert done.usage is not None and done.usage.completion_tokens <= 3
    gut.stub.DeleteDeployment(pb.DeleteDeploymentRequest(name="deployments/tiny"))
    with gut.http() as c:
        assert c.post("/v2/models/tiny/generate", json={"text_input": "x"}).status_code == 404


def test_models_from_dataset_versions(make_gateway, tiny_model, tmp_path) -> None:
    """Base model and adapter pushed as dataset versions, materialized by the gateway through the
    datasets service (the seed's `--base chatglm3-6b --adapter output@3`)."""
    from tunelab.cli.clients.datasets import DatasetClient
    from tunelab.common.grpc.channel import open_channel
    from tunelab.datasets.server import build_server
    from tunelab.datasets.settings import DatasetSettings
    from tunelab.datasets.v1 import datasets_pb2 as dpb

    base, lora = tiny_model
    server, _ = build_server(DatasetSettings(data_dir=tmp_path / "ds", port=0, metrics_port=0))
    server.start()
    channel = open_channel(server.address)
    try:
        client = DatasetClient(channel, tmp_path / "cache")
        client.create("tiny-base", dpb.Source(upload=dpb.UploadSource()))
        client.push("tiny-base", base)
        client.create("output", dpb.Source(upload=dpb.UploadSource()))
        (tmp_path / "out" / "checkpoint-1").mkdir(parents=True)
        for f in lora.iterdir():
            (tmp_path / "out" / "checkpoint-1" / f.name).write_bytes(f.read_bytes())
        client.push("output", tmp_path / "out")
        gut = make_gateway(datasets_addr=server.address)
        dep = pb.Deployment(
            model_name="chatglm3-ad",
            base_model=pb.ModelSource(dataset_version="datasets/tiny-base"),
            adapters=[
                pb.LoraAdapter(
                    name="output",
                    source=pb.ModelSource(
                        dataset_version="datasets/output/versions/1", subpath="checkpoint-1"
                    ),
                )
            ],
            default_adapter="output",
            upstream=pb.Upstream(embedded=pb.EmbeddedUpstream()),
        )
        d = gut.deploy("ad", dep, timeout=180)
        assert d.state == pb.Deployment.STATE_READY, d.error
        assert d.base_model.resolved_version == "datasets/tiny-base/versions/1"
        assert d.adapters[0].source.resolved_version == "datasets/output/versions/1"
        with gut.http() as c:
            r = c.post("/v2/models/chatglm3-ad/generate", json={"text_input": "hello"})
            assert r.status_code == 200 and r.json()["text_output"].startswith("hello")
    finally:
        channel.close()
        server.stop(1)
