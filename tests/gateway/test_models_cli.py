"""`tunelab model …`, `tunelab key …` and `tunelab generate` against a real gateway."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tunelab.cli.main import app


def test_model_and_key_commands(make_gateway, fake, monkeypatch) -> None:
    gut = make_gateway()
    monkeypatch.setenv("TUNELAB_GATEWAY_ADDR", gut.gateway.grpc.address)
    monkeypatch.setenv("TUNELAB_GATEWAY_URL", gut.url)
    monkeypatch.setenv("TUNELAB_CONFIG", "/nonexistent/config.yaml")
    run = CliRunner().invoke
    r = run(
        app,
        [
            "model",
            "deploy",
            "chatglm3-ad",
            "--base",
            "path:base-model",
            "--adapter",
            "ad=/models/ad",
            "--vllm",
            fake.url,
        ],
    )
    assert r.exit_code == 0, r.output
    assert "READY" in r.output and "chatglm3-ad, ad" in r.output
    listed = json.loads(run(app, ["model", "ls", "-o", "json"]).output)
    assert listed[0]["name"] == "deployments/chatglm3-ad" and listed[0]["default_adapter"] == "ad"
    out = run(app, ["generate", "chatglm3-ad", "hello", "--max-tokens", "4"])
    assert out.exit_code == 0 and out.output.strip() == "helloHello, world!"
    assert fake.record.requests[-1]["temperature"] == 0.7 and fake.record.requests[-1]["max_tokens"] == 4
    streamed = run(app, ["generate", "chatglm3-ad", "hello", "--stream", "--max-tokens", "2"])
    assert streamed.output.strip() == "Hello,"
    key = run(app, ["key", "create", "ci", "--model", "chatglm3-ad"])
    assert key.exit_code == 0 and key.output.strip().splitlines()[-1].startswith("tl-")
    assert run(app, ["model", "rm", "chatglm3-ad"]).exit_code == 0
    missing = run(app, ["model", "get", "chatglm3-ad"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
