"""The embedded engine on its own: vLLM's API on a tiny model, requests batched together,
adapters loaded at runtime, a disconnected client's row stopped."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from support import serve_in_thread
from tunelab.engine.app import build_app
from tunelab.engine.batcher import Batcher
from tunelab.engine.model import ServedModel


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.recipes.tinymodel import build_tiny_model

    root = tmp_path_factory.mktemp("engine")
    base = build_tiny_model(root / "base", "hello world\nthe quick brown fox\n" * 20, vocab_size=280)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    lora.save_pretrained(root / "lora")
    return base, root / "lora"


@pytest.fixture(scope="module")
def engine(tiny):
    base, lora = tiny
    model = ServedModel(str(base), "tiny")
    batcher = Batcher(model, max_batch_size=8, batch_wait_s=0.05)
    batcher.start()
    with serve_in_thread(build_app(model, batcher, adapter_roots=[lora.parent])) as url:
        yield url, model, batcher
    batcher.stop()


def test_concurrent_requests_share_batches(engine) -> None:
    url, _, batcher = engine
    before = batcher.batches
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(lambda _: httpx.post(f"{url}/v1/completions", json=body, timeout=60).json(), range(6))
        )
    assert len({a["choices"][0]["text"] for a in answers}) == 1  # greedy: the same answer in every row
    assert all(a["usage"]["completion_tokens"] <= 4 for a in answers)
    assert batcher.batches - before < 6  # they were generated together


def test_seeded_sampling_repeats_and_errors_look_like_vllm(engine) -> None:
    url, _, _ = engine
    body = {"model": "tiny", "prompt": "the", "max_tokens": 5, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    a = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    b = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    missing = httpx.post(f"{url}/v1/completions", json={**body, "model": "nope"}, timeout=60)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404
    bad = httpx.post(f"{url}/v1/completions", json={"model": "tiny"}, timeout=60)
    assert bad.status_code == 400 and "prompt" in bad.json()["error"]["message"]


def test_runtime_adapter_and_chat_stream(engine, tiny) -> None:
    url, _model, _ = engine
    _, lora = tiny
    r = httpx.post(
        f"{url}/v1/load_lora_adapter", json={"lora_name": "ad", "lora_path": str(lora)}, timeout=60
    )
    assert r.status_code == 200 and "added successfully" in r.text
    ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
    assert ids == ["tiny", "ad"]
    body = {"model": "ad", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and '"role":"assistant"' in lines[0]
    assert httpx.get(f"{url}/health").status_code == 200
    assert "tunelab_engine_requests_total" in httpx.get(f"{url}/metrics").text
