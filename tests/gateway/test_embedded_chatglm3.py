"""The gateway serving models shaped like the imported ChatGLM3 on embedded engines it starts: the
seed's Triton curl, OpenAI chat with ChatGLM3's template applied once, generation that stops on
``<|user|>`` and ``<|observation|>``, base and adapter requests batched together; and bases that ship
their own code, refused without the deployment's trust_remote_code and served with it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from tunelab.gateway.v1 import gateway_pb2 as pb

SEED_BODY = (
    '{"text_input": "类型#上衣*材质#牛仔布*颜色#白色*风格#简约*图案#刺绣*衣样式#外套*衣款式#破洞", '
    '"stream": false, '
    '"sampling_parameters": "{\\"temperature\\": 0.7, \\"top_p\\": 0.95, \\"max_tokens\\": 1024}"}'
)


def embedded(model_name: str, base: Path, adapters: dict[str, Path], **upstream) -> pb.Deployment:
    return pb.Deployment(
        model_name=model_name,
        base_model=pb.ModelSource(path=str(base)),
        adapters=[pb.LoraAdapter(name=n, source=pb.ModelSource(path=str(p))) for n, p in adapters.items()],
        upstream=pb.Upstream(embedded=pb.EmbeddedUpstream(device="cpu", **upstream)),
    )


def complete(url: str, model: str, prompt: str, **extra) -> httpx.Response:
    body = {"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0, **extra}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120)


def mixed_batch_matches_alone(url: str, requests: list[tuple[str, str]]) -> None:
    """Each request answers 200, and the same sent together as sent alone (greedy)."""
    alone = [complete(url, *req).json()["choices"][0]["text"] for req in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda req: complete(url, *req), requests))
    assert [r.status_code for r in together] == [200] * len(requests), [r.text for r in together]
    assert [r.json()["choices"][0]["text"] for r in together] == alone


def test_imported_chatglm3_shape_end_to_end(make_gateway, chatglm3_like) -> None:
    from transformers import AutoTokenizer

    gut = make_gateway()
    dep = embedded("chatglm3", chatglm3_like.glm, {"chatglm3-ad": chatglm3_like.glm_lora})
    d = gut.deploy("chatglm3", dep, timeout=180)
    assert d.state == pb.Deployment.STATE_READY, d.error
    with gut.http() as c:
        seed = c.post("/v2/models/chatglm3-ad/generate", content=SEED_BODY)
        assert seed.status_code == 200, seed.text
        answer = seed.json()
        assert answer["text_output"].startswith("类型#上衣") and answer["model_name"] == "chatglm3-ad"
        for prompt, shown in (("hello @", "~"), ("the quick %", "^")):  # then <|user|> / <|observation|>
            r = c.post(
                "/v2/models/chatglm3-ad/generate",
                json={
                    "text_input": prompt,
                    "sampling_parameters": json.dumps({"temperature": 0, "max_tokens": 12}),
                    "exclude_input_in_output": True,
                    "return_finish_reason": True,
                },
            )
            assert (r.json()["text_output"], r.json()["finish_reason"]) == (shown, "stop"), r.text
    client = openai.OpenAI(base_url=f"{gut.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "类型#上衣*颜色#黑色"}]
    chat = client.chat.completions.create(model="chatglm3-ad", messages=messages, max_tokens=4)
    tok = AutoTokenizer.from_pretrained(chatglm3_like.glm)
    rendered = "[gMASK]sop<|user|>\n 类型#上衣*颜色#黑色<|assistant|>"
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == rendered
    assert chat.usage is not None  # the template's [gMASK]sop and nothing more before it
    assert chat.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])
    stopped = client.completions.create(model="chatglm3", prompt="hello @", max_tokens=12, temperature=0)
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == ("~", "stop")
    mixed_batch_matches_alone(
        gut.url,
        [("chatglm3", "hello world"), ("chatglm3-ad", "hello world"), ("chatglm3-ad", "the quick brown fox")],
    )


def test_remote_code_base_needs_the_deployments_option(make_gateway, chatglm3_like) -> None:
    gut = make_gateway()
    adapters = {"sf-ad": chatglm3_like.seqfirst_lora}
    refused = gut.deploy("sf", embedded("sf", chatglm3_like.seqfirst, adapters), timeout=60)
    assert refused.state == pb.Deployment.STATE_FAILED
    assert "auto_map in config.json" in refused.error and "--trust-remote-code" in refused.error
    assert "trust_remote_code" in refused.error and not refused.replica_statuses  # no engine started
    gut.stub.DeleteDeployment(pb.DeleteDeploymentRequest(name="deployments/sf"))
    trusted = embedded("sf", chatglm3_like.seqfirst, adapters, trust_remote_code=True)
    d = gut.deploy("sf", trusted, timeout=180)
    assert d.state == pb.Deployment.STATE_READY, d.error
    assert d.upstream.embedded.trust_remote_code
    # Sequence-first, like ChatGLM3's own code: base and adapter rows in one batch still answer 200.
    mixed_batch_matches_alone(gut.url, [("sf", "hello world"), ("sf-ad", "hello world"), ("sf-ad", "the")])


def test_thudm_chatglm3_layout_points_to_model_import(make_gateway, tmp_path) -> None:
    base = tmp_path / "chatglm3-6b"
    base.mkdir()
    config = {"model_type": "chatglm", "auto_map": {"AutoModelForCausalLM": "modeling_chatglm.X"}}
    (base / "config.json").write_text(json.dumps(config))
    d = make_gateway().deploy("glm3", embedded("glm3", base, {}), timeout=60)
    assert d.state == pb.Deployment.STATE_FAILED
    assert "THUDM's layout" in d.error and "`tunelab model import NAME --from DATASET`" in d.error


def test_engine_load_failure_is_one_readable_line(make_gateway, chatglm3_dir: Path) -> None:
    """THUDM's own code, trusted, fails to load under transformers 5: the deployment says why in one
    line, without the traceback (which stays in the engine's log), and to import the checkpoint."""
    base = chatglm3_dir
    d = make_gateway().deploy("thudm", embedded("thudm", base, {}, trust_remote_code=True), timeout=180)
    assert d.state == pb.Deployment.STATE_FAILED
    assert "\n" not in d.error and "Traceback" not in d.error, d.error
    said = f"engine exited with code 3 while loading: cannot load {base}: AttributeError: "
    assert said in d.error, d.error
    assert "`tunelab model import NAME --from DATASET`" in d.error, d.error  # and what to do instead
