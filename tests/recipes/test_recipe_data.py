"""Conversations -> tokens: loss on assistant tokens only, truncation that keeps the answer, bad lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from recipehelpers import write_jsonl
from tunelab.recipes import advertisegen_sample
from tunelab.recipes.lora.data import IGNORE_INDEX, ChatFormat, Sample, tokenize_file
from tunelab.recipes.lora.errors import DataError
from tunelab.recipes.tinymodel import build_tiny_model


def conversation(*turns: str, **extra: Any) -> dict[str, Any]:
    roles = ["user", "assistant"] * len(turns)
    return {"conversations": [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)], **extra}


def trained_text(tokenizer: Any, sample: Sample) -> str:
    return str(tokenizer.decode([t for t in sample.labels if t != IGNORE_INDEX]))


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model)


def tokenize(
    tokenizer: Any, path: Path, max_input: int = 256, max_output: int = 512, mode: str = "auto"
) -> Any:
    return tokenize_file(path, tokenizer, ChatFormat(tokenizer, mode), max_input, max_output)


def test_loss_is_on_assistant_tokens_only(tokenizer: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.json", [conversation("类型#上衣*颜色#白色", "这件白色上衣很百搭")])
    [sample] = tokenize(tokenizer, path).samples
    assert trained_text(tokenizer, sample) == "这件白色上衣很百搭<|im_end|>\n"
    assert tokenizer.decode(sample.input_ids[: sample.prompt_len]).endswith("<|im_start|>assistant\n")
    assert sample.answer == "这件白色上衣很百搭"


def test_multi_turn_trains_every_assistant_turn_unless_loss_is_false(tokenizer: Any, tmp_path: Path) -> None:
    row = conversation("第一问", "第一答", "第二问", "第二答")
    skipped = conversation("第一问", "第一答", "第二问", "第二答")
    skipped["conversations"][1]["loss"] = False
    [both, last_only] = tokenize(tokenizer, write_jsonl(tmp_path / "t.json", [row, skipped])).samples
    assert trained_text(tokenizer, both) == "第一答<|im_end|>\n第二答<|im_end|>\n"
    assert trained_text(tokenizer, last_only) == "第二答<|im_end|>\n"


def test_raw_advertisegen_lines_are_read_as_one_turn(tokenizer: Any, tmp_path: Path) -> None:
    record = advertisegen_sample.generate(1)[0]
    [sample] = tokenize(tokenizer, write_jsonl(tmp_path / "train.json", [record])).samples
    assert trained_text(tokenizer, sample) == record["summary"] + "<|im_end|>\n"


def test_truncation_keeps_the_answer(tokenizer: Any, tmp_path: Path) -> None:
    long_prompt = "类型#上衣*" * 300
    path = write_jsonl(
        tmp_path / "train.json", [conversation(long_prompt, "答案很短"), conversation("短", "长" * 400)]
    )
    result = tokenize(tokenizer, path, max_input=24, max_output=24)
    cut_prompt, cut_answer = result.samples
    assert (result.truncated_prompts, result.truncated_answers) == (1, 1)
    assert len(cut_prompt.input_ids) == 24 + 24 + 1  # the whole budget, answer intact
    assert trained_text(tokenizer, cut_prompt) == "答案很短<|im_end|>\n"
    assert tokenizer.decode(cut_prompt.input_ids[: cut_prompt.prompt_len]).endswith("<|im_start|>assistant\n")
    answer_tokens = [t for t in cut_answer.labels if t != IGNORE_INDEX]
    assert len(answer_tokens) == 24 and tokenizer.decode(answer_tokens).startswith("长长")


def test_fallback_format_without_a_chat_template(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "plain", advertisegen_sample.corpus(50), chat_template=None)
    plain = AutoTokenizer.from_pretrained(model)
    path = write_jsonl(tmp_path / "train.json", [conversation("问题", "回答")])
    result = tokenize(plain, path)
    assert "<|assistant|>" in plain.chat_template  # the fallback, saved with the adapter
    assert trained_text(plain, result.samples[0]) == "回答<|im_end|>\n"


GOOD = '{"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + "\n{not json\n", r"train\.json:2: not valid JSON"),
        (
            GOOD + '\n\n{"conversations": [{"role": "user", "content": "q"}]}\n',
            r"train\.json:3: no assistant message",
        ),
        (
            '{"conversations": [{"role": "tool", "content": "x"}]}\n',
            r"train\.json:1: message 1 has role 'tool'",
        ),
        ('{"conversations": [{"role": "user"}]}\n', r"train\.json:1: message 1 needs a string"),
        (
            '{"conversations": [{"role": "assistant", "content": "a"}]}\n',
            r"train\.json:1: .*needs a user message",
        ),
        ('["a list"]\n', r"train\.json:1: expected a JSON object"),
        ('{"text": "no conversations"}\n', r"train\.json:1: expected a non-empty 'conversations' list"),
        ("\n   \n", r"train\.json is empty"),
    ],
)
def test_bad_lines_name_file_and_line(tokenizer: Any, tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "train.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        tokenize(tokenizer, path)


def test_templates_with_a_default_system_prompt_work_and_unusable_ones_say_what_to_do(
    tiny_model: Path, tmp_path: Path
) -> None:
    from tunelab.recipes.lora.errors import ModelError

    qwen_like = AutoTokenizer.from_pretrained(tiny_model)
    qwen_like.chat_template = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
        + qwen_like.chat_template
    )
    path = write_jsonl(tmp_path / "train.json", [conversation("问题", "回答")])
    [sample] = tokenize(qwen_like, path).samples
    assert trained_text(qwen_like, sample) == "回答<|im_end|>\n"
    assert qwen_like.decode(sample.input_ids).startswith("<|im_start|>system\nYou are helpful.")

    last_only = AutoTokenizer.from_pretrained(tiny_model)
    last_only.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>>{% endif %}"
    with pytest.raises(ModelError, match=r"train\.json:1: .*set tunelab\.chat_template: fallback"):
        tokenize(last_only, path)
