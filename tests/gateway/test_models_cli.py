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


def test_deploy_trust_remote_code_option(make_gateway, fake, monkeypatch, tmp_path) -> None:
    """Off by default and documented; refused with --vllm (vLLM's own flag); a base that ships code
    deployed without it fails with a message naming it."""
    gut = make_gateway()
    monkeypatch.setenv("TUNELAB_GATEWAY_ADDR", gut.gateway.grpc.address)
    monkeypatch.setenv("TUNELAB_CONFIG", "/nonexistent/config.yaml")
    monkeypatch.setenv("COLUMNS", "200")
    run = CliRunner().invoke
    helped = " ".join(run(app, ["model", "deploy", "--help"]).output.split())
    assert "--trust-remote-code" in helped and "Off by default" in helped
    assert "only for a model repository you trust" in helped
    base = tmp_path / "remote"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"auto_map": {"AutoModelForCausalLM": "m.M"}}))
    vllm = run(app, ["model", "deploy", "x", "--base", str(base), "--vllm", fake.url, "--trust-remote-code"])
    assert vllm.exit_code == 2 and "vLLM's own --trust-remote-code" in " ".join(vllm.output.split())
    refused = run(app, ["model", "deploy", "remote", "--base", str(base)])
    assert refused.exit_code == 1 and "FAILED" in refused.output
    error = refused.output.strip().splitlines()[-1]
    assert "ships its own Python code" in error and "deploy with --trust-remote-code" in error
    from tunelab.cli.clients.gateway import GatewayClient

    sent = []
    monkeypatch.setattr(GatewayClient, "deploy", lambda self, name, dep: sent.append(dep) or dep)
    trusted = run(app, ["model", "deploy", "ok", "--base", str(base), "--trust-remote-code", "--no-wait"])
    assert trusted.exit_code == 0, trusted.output
    assert sent[0].upstream.embedded.trust_remote_code
