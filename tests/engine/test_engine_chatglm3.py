"""The engine on models shaped like the imported ChatGLM3 (``glmtiny``): the chat template's
``[gMASK]sop`` sent once, generation stopping on ``<|user|>`` and ``<|observation|>`` without
showing them, and batches that mix the base model and an adapter answering every row what it gets
alone, on a batch-first GLM and on a sequence-first model (ChatGLM3's own layout)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from glmtiny import CHAT_TEMPLATE, build_glm, build_lora, build_seqfirst
from support import serve_in_thread
from tunelab.engine.app import build_app
from tunelab.engine.batcher import Batcher, GenRequest
from tunelab.engine.model import LoadError, ServedModel

torch.set_num_threads(1)  # the machine is small and shared


class RecordingBatcher(Batcher):
    """Keeps every request it is given, to read the prompt ids the engine made."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[GenRequest] = []

    def submit(self, req: GenRequest) -> None:
        self.seen.append(req)
        super().submit(req)


@dataclass
class Engine:
    url: str
    model: ServedModel
    batcher: RecordingBatcher


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("chatglm3-like")
    glm = build_glm(root / "glm")
    seqfirst = build_seqfirst(root / "seqfirst")
    return {
        "glm": (glm, build_lora(glm, root / "glm-lora", ["q_proj", "v_proj"])),
        "seqfirst": (
            seqfirst,
            build_lora(seqfirst, root / "seqfirst-lora", ["query_key_value"], trust_remote_code=True),
        ),
    }


def serve(base: Path, lora: Path, trust_remote_code: bool = False) -> Iterator[Engine]:
    model = ServedModel(str(base), "base", trust_remote_code=trust_remote_code)
    model.load_adapter("ad", str(lora))
    # A wide batching window: requests sent together land in one batch.
    batcher = RecordingBatcher(model, max_batch_size=8, batch_wait_s=0.3)
    batcher.start()
    with serve_in_thread(build_app(model, batcher)) as url:
        yield Engine(url, model, batcher)
    batcher.stop()


@pytest.fixture(scope="module")
def glm(models) -> Iterator[Engine]:
    yield from serve(*models["glm"])


def test_chat_sends_the_templates_prefix_once(glm: Engine) -> None:
    tok = glm.model.tokenizer
    gmask, sop = tok.convert_tokens_to_ids(["[gMASK]", "sop"])
    assert tok.chat_template == CHAT_TEMPLATE
    messages = [{"role": "user", "content": "类型#上衣*颜色#黑色"}]
    body = {"model": "base", "messages": messages, "max_tokens": 2, "temperature": 0}
    r = httpx.post(f"{glm.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    ids = glm.batcher.seen[-1].ids
    assert ids[:2] == [gmask, sop] and ids.count(gmask) == 1 and ids.count(sop) == 1
    rendered = "[gMASK]sop<|user|>\n 类型#上衣*颜色#黑色<|assistant|>"
    assert ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert r.json()["usage"]["prompt_tokens"] == len(ids)
    # A plain completion (the Triton text_input) gets the prefix from the tokenizer, once.
    r = httpx.post(
        f"{glm.url}/v1/completions", json={"model": "base", "prompt": "hello", "max_tokens": 1}, timeout=60
    )
    assert r.status_code == 200, r.text
    ids = glm.batcher.seen[-1].ids
    assert ids[:2] == [gmask, sop] and ids.count(gmask) == 1
    assert ids[2:] == tok("hello", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    ("prompt", "stop_token", "shown"), [("hello @", "<|user|>", "~"), ("the quick %", "<|observation|>", "^")]
)
@pytest.mark.parametrize("stream", [False, True])
def test_generation_stops_on_chatglm3s_stop_tokens(
    glm: Engine, prompt: str, stop_token: str, shown: str, stream: bool
) -> None:
    """The model writes ``shown`` and then ``stop_token`` (glmtiny.FORCED); the answer ends there
    (finish_reason "stop" well before max_tokens), and the stop token never shows."""
    tok = glm.model.tokenizer
    assert glm.model.stop_ids == {2, *tok.convert_tokens_to_ids(["<|user|>", "<|observation|>"])}
    with glm.model.lock, torch.inference_mode(), glm.model.using("ad"):
        logits = glm.model.model(input_ids=torch.tensor([glm.model.encode(prompt + shown)])).logits
    assert tok.convert_ids_to_tokens(int(logits[0, -1].argmax())) == stop_token  # what the model writes
    body = {"model": "ad", "prompt": prompt, "max_tokens": 12, "temperature": 0, "stream": stream}
    if not stream:
        answer = httpx.post(f"{glm.url}/v1/completions", json=body, timeout=60).json()
        choice = answer["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == (shown, "stop")
        assert answer["usage"]["completion_tokens"] == 1
    else:
        body["stream_options"] = {"include_usage": True}
        with httpx.stream("POST", f"{glm.url}/v1/completions", json=body, timeout=60) as resp:
            events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        assert text == shown and chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["usage"]["completion_tokens"] == 1


REQUESTS = [
    ("base", "hello world"),
    ("ad", "hello world"),
    ("base", "the quick brown fox jumps"),
    ("ad", "类型#上衣"),
    ("ad", "a tiny model"),
]


def _complete(url: str, model: str, prompt: str) -> httpx.Response:
    body = {"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120)


def _mixed_batch_matches_alone(engine: Engine) -> None:
    alone = []
    for model, prompt in REQUESTS:
        r = _complete(engine.url, model, prompt)
        assert r.status_code == 200, r.text
        alone.append(r.json()["choices"][0]["text"])
    assert alone[0] != alone[1]  # the adapter changes the answer: the comparison means something
    before = engine.batcher.batches
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        together = list(pool.map(lambda req: _complete(engine.url, *req), REQUESTS))
    assert [r.status_code for r in together] == [200] * len(REQUESTS), [r.text for r in together]
    assert [r.json()["choices"][0]["text"] for r in together] == alone
    assert engine.batcher.batches - before < len(REQUESTS)  # they did share a batch


def test_mixed_adapter_batch_on_a_batch_first_model(glm: Engine) -> None:
    """GLM is batch-first: peft's per-row adapter_names serves base and adapter rows in one pass."""
    assert glm.model.mixable == {"ad"}
    _mixed_batch_matches_alone(glm)


def test_mixed_adapter_batch_on_a_sequence_first_model(models) -> None:
    """ChatGLM3's own layout is [seq, batch, hidden]: peft's adapter_names fails there (it answered
    500 before); the engine finds out when the adapter loads and runs each adapter's rows apart."""
    for engine in serve(*models["seqfirst"], trust_remote_code=True):
        assert engine.model.mixable == set()
        _mixed_batch_matches_alone(engine)
        # Had the probe been wrong, the failed mixed batch falls back before answering anything,
        # and peft's hooks left behind by the failure are gone (later batches still work).
        engine.model.mixable.add("ad")
        _mixed_batch_matches_alone(engine)
        assert engine.model.mixable == set()


def test_remote_code_is_refused_without_trust(models) -> None:
    base, _ = models["seqfirst"]
    with pytest.raises(LoadError, match=r"auto_map in config\.json.*--trust-remote-code"):
        ServedModel(str(base), "base")


def _scored(url: str, model: str, prompt: str) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": 3, "temperature": 0, "logprobs": 2, "echo": True}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["logprobs"]


def test_logprobs_leave_out_stop_tokens_and_hold_in_mixed_batches(glm: Engine) -> None:
    """The stop token ends the answer and is not one of its tokens; the prompt's logprobs (echo) of
    base and adapter rows sharing a batch are each what the row gets alone."""
    body = {"model": "ad", "prompt": "hello @", "max_tokens": 12, "temperature": 0, "logprobs": 1}
    answer = httpx.post(f"{glm.url}/v1/completions", json=body, timeout=60).json()
    assert answer["choices"][0]["logprobs"]["tokens"] == ["~"] and answer["usage"]["completion_tokens"] == 1
    alone = [_scored(glm.url, model, prompt) for model, prompt in REQUESTS]
    assert alone[0]["token_logprobs"] != alone[1]["token_logprobs"]  # the adapter scores differently
    before = glm.batcher.batches
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        together = list(pool.map(lambda req: _scored(glm.url, *req), REQUESTS))
    assert glm.batcher.batches - before < len(REQUESTS)  # they did share a batch
    for a, t in zip(alone, together, strict=True):
        assert t["tokens"] == a["tokens"] and t["token_logprobs"][0] is None
        assert t["token_logprobs"][1:] == pytest.approx(a["token_logprobs"][1:], abs=1e-3)
