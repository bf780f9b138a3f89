"""The engine's OpenAI surface as vLLM gives it, called with the official `openai` client: logprobs
in both shapes (streamed too, and equal to the model's own distribution), several prompts and ``n``
answers per request, ``GET /v1/models/{id}``, and a clear 400 for what the engine does not do
(tools, structured output) or for bounds passed."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch

from support import serve_in_thread
from tunelab.engine.app import build_app
from tunelab.engine.batcher import Batcher
from tunelab.engine.model import ServedModel

TEXT = "hello world\nthe quick brown fox\n广告 文案 生成\n" * 20


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.recipes.tinymodel import build_tiny_model

    root = tmp_path_factory.mktemp("openai")
    base = build_tiny_model(root / "base", TEXT, vocab_size=300)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    lora.save_pretrained(root / "lora")
    model = ServedModel(str(base), "tiny")
    batcher = Batcher(model, max_batch_size=8, batch_wait_s=0.02)
    batcher.start()
    with serve_in_thread(build_app(model, batcher, adapter_roots=[root])) as url:
        yield url, model, root / "lora"
    batcher.stop()


@pytest.fixture(scope="module")
def client(engine) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{engine[0]}/v1", api_key="unused", max_retries=0, timeout=120)


def next_token_logprobs(model: ServedModel, ids: list[int]) -> torch.Tensor:
    """The base model's logprobs for the token after ``ids``, computed here without the engine."""
    with model.lock, torch.inference_mode(), model.using("__base__"):
        logits = model.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return torch.log_softmax(logits, dim=-1)


def test_completion_logprobs_are_the_models_and_shaped_like_openai(engine, client) -> None:
    _, model, _ = engine
    kw = {"model": "tiny", "prompt": "the quick", "max_tokens": 4, "temperature": 0, "logprobs": 3}
    out = client.completions.create(**kw)
    lp = out.choices[0].logprobs
    assert lp is not None and out.usage is not None
    n = out.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.text_offset[0] == 0
    assert all(
        b - a == len(t) for a, b, t in zip(lp.text_offset, lp.text_offset[1:], lp.tokens, strict=False)
    )
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert token in top and top[token] == logprob
        assert logprob == max(top.values())  # greedy: the sampled token is the most likely one
    # Named by id (vLLM's return_tokens_as_token_ids), no two tokens share a key: the 3 most likely
    # and the sampled one, which greedy decoding makes one of them.
    by_id = client.completions.create(**kw, extra_body={"return_tokens_as_token_ids": True})
    lp_ids = by_id.choices[0].logprobs
    assert lp_ids is not None and lp_ids.token_logprobs == lp.token_logprobs
    assert all(len(top) == 3 for top in lp_ids.top_logprobs)
    # The first token's logprob and alternatives are the model's own.
    expected = next_token_logprobs(model, model.encode("the quick"))
    best = torch.topk(expected, 3)
    assert lp_ids.tokens[0] == f"token_id:{int(best.indices[0])}"
    first = lp_ids.top_logprobs[0]
    for token_id, value in zip(best.indices.tolist(), best.values.tolist(), strict=True):
        assert math.isclose(first[f"token_id:{token_id}"], value, abs_tol=1e-4)


def test_echo_with_logprobs_scores_the_prompt(engine, client) -> None:
    _, model, _ = engine
    prompt = "hello world"
    out = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=2, temperature=0, logprobs=1, echo=True
    )
    choice, usage = out.choices[0], out.usage
    assert usage is not None and choice.text.startswith(prompt) and choice.logprobs is not None
    lp = choice.logprobs
    assert len(lp.tokens) == usage.prompt_tokens + usage.completion_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    ids = model.encode(prompt)
    second = next_token_logprobs(model, ids[:1])[ids[1]]
    assert math.isclose(lp.token_logprobs[1], float(second), abs_tol=1e-4)


def test_chat_logprobs_carry_bytes_and_top_alternatives(client) -> None:
    out = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "广告"}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    choice = out.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert out.usage is not None and len(content) == out.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == entry.top_logprobs[0].logprob  # greedy
        assert entry.bytes is not None and entry.token == bytes(entry.bytes).decode(errors="replace")
    joined = b"".join(bytes(e.bytes or []) for e in content)
    assert joined.decode(errors="replace") == choice.message.content
    plain = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "广告"}], max_tokens=2, temperature=0
    )
    assert plain.choices[0].logprobs is None


def test_streamed_logprobs_match_the_whole_answer(client) -> None:
    kw = {"model": "tiny", "max_tokens": 5, "temperature": 0}
    whole = client.completions.create(prompt="the quick", logprobs=2, **kw).choices[0].logprobs
    tokens, offsets, tops = [], [], []
    for chunk in client.completions.create(prompt="the quick", logprobs=2, stream=True, **kw):
        lp = chunk.choices[0].logprobs if chunk.choices else None
        if lp is not None:
            tokens += lp.tokens or []
            offsets += lp.text_offset or []
            tops += lp.top_logprobs or []
    assert whole is not None
    assert (tokens, offsets, tops) == (whole.tokens, whole.text_offset, whole.top_logprobs)

    messages = [{"role": "user", "content": "hi"}]
    chat = client.chat.completions.create(messages=messages, logprobs=True, top_logprobs=1, **kw)
    assert chat.choices[0].logprobs is not None
    streamed = []
    for chunk in client.chat.completions.create(
        messages=messages, logprobs=True, top_logprobs=1, stream=True, **kw
    ):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed += chunk.choices[0].logprobs.content or []
    assert streamed == chat.choices[0].logprobs.content


def test_logprob_bounds_are_refused_naming_the_field(engine, client) -> None:
    url = engine[0]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", logprobs=21)
    assert "logprobs" in e.value.message and "20" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=21
        )
    assert "top_logprobs" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], top_logprobs=2
        )
    assert "top_logprobs" in e.value.message and "logprobs: true" in e.value.message
    for bad in (-1, True, "3"):
        r = httpx.post(
            f"{url}/v1/completions", json={"model": "tiny", "prompt": "x", "logprobs": bad}, timeout=60
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs", r.text


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
            "response_format",
        ),
        ({"guided_json": {"type": "object"}}, "guided_json"),
        ({"guided_choice": ["yes", "no"]}, "guided_choice"),
    ],
)
def test_what_only_vllm_does_is_refused_not_ignored(engine, fields, named) -> None:
    url = engine[0]
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == named and error["type"] == "BadRequestError" and error["code"] == 400
    assert f"does not support '{named}'" in error["message"] and "vLLM runtime" in error["message"]


def test_structured_output_is_refused_on_completions_too(engine) -> None:
    url = engine[0]
    for fields, named in (
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"suffix": "x"}, "suffix"),
    ):
        r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x", **fields}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == named, r.text


def test_tools_unused_and_plain_text_format_are_accepted(client) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "hi"}]
    kw = {"model": "tiny", "messages": messages, "max_tokens": 3, "temperature": 0}
    without = client.chat.completions.create(**kw)
    unused = client.chat.completions.create(tools=tools, tool_choice="none", **kw)
    text = client.chat.completions.create(response_format={"type": "text"}, **kw)
    # The tools are genuinely unused: the prompt, and so the answer, is the same as without them.
    assert unused.choices[0].message.content == without.choices[0].message.content
    assert (
        unused.usage == without.usage
        and text.choices[0].message.content == without.choices[0].message.content
    )


def test_a_model_is_retrievable_by_id_and_adapters_by_theirs(engine, client) -> None:
    url, _, lora = engine
    r = httpx.post(
        f"{url}/v1/load_lora_adapter", json={"lora_name": "tiny-ad", "lora_path": str(lora)}, timeout=60
    )
    assert r.status_code == 200, r.text
    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {"tiny", "tiny-ad"}
    for model_id in listed:
        assert client.models.retrieve(model_id) == listed[model_id]
    assert client.models.retrieve("tiny-ad").model_extra["parent"] == "tiny"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert e.value.status_code == 404 and "`nope` does not exist" in e.value.message


def test_prompt_lists_and_n_are_indexed_as_vllm_does(client) -> None:
    kw = {"model": "tiny", "max_tokens": 3, "temperature": 0}
    alone = [client.completions.create(prompt=p, **kw).choices[0].text for p in ("hello", "the quick")]
    out = client.completions.create(prompt=["hello", "the quick"], n=2, **kw)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert [c.text for c in out.choices] == [alone[0], alone[0], alone[1], alone[1]]
    one = client.completions.create(prompt="hello", **kw).usage
    two = client.completions.create(prompt="the quick", **kw).usage
    assert out.usage is not None and one is not None and two is not None
    assert out.usage.prompt_tokens == one.prompt_tokens + two.prompt_tokens  # each prompt once, not n times
    assert out.usage.completion_tokens == 2 * (one.completion_tokens + two.completion_tokens)

    tokens = [5, 6, 7]
    by_ids = client.completions.create(prompt=tokens, **kw)
    by_lists = client.completions.create(prompt=[tokens, [8, 9]], **kw)
    assert len(by_ids.choices) == 1 and [c.index for c in by_lists.choices] == [0, 1]
    assert by_lists.choices[0].text == by_ids.choices[0].text

    texts: dict[int, str] = {}
    finished = set()
    for chunk in client.completions.create(prompt=["hello", "the quick"], n=2, stream=True, **kw):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1, 2, 3} and [texts[i] for i in range(4)] == [c.text for c in out.choices]


def test_seeded_answers_differ_from_each_other_and_repeat(client) -> None:
    kw = {"model": "tiny", "prompt": "the", "max_tokens": 8, "temperature": 1.0, "seed": 11, "n": 3}
    first = [c.text for c in client.completions.create(**kw).choices]
    again = [c.text for c in client.completions.create(**kw).choices]
    assert first == again and len(set(first)) > 1


@pytest.mark.parametrize(
    "prompt",
    [[], [[]], [1, "a"], ["a", [1]], [[1], "a"], [-1], [True], [[1.5]], {"text": "x"}, [999999]],
)
def test_bad_prompts_are_refused_naming_prompt(engine, prompt) -> None:
    url = engine[0]
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": prompt}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "prompt" and error["message"].startswith("prompt: "), error


def test_null_fields_take_their_defaults_as_in_vllm(engine) -> None:
    url = engine[0]
    nulls = {"n": None, "logprobs": None, "stream": None, "echo": None, "response_format": None, "seed": None}
    r = httpx.post(
        f"{url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2, **nulls}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert [c["index"] for c in r.json()["choices"]] == [0] and r.json()["choices"][0]["logprobs"] is None
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        **{k: None for k in ("logprobs", "top_logprobs", "tools", "tool_choice", "response_format", "n")},
    }
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is None, r.text
