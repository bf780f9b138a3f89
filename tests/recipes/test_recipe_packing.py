"""Packed rows: positions restart per sample, and no sample attends to another (proved on real models)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recipehelpers import write_jsonl
from tunelab.recipes import advertisegen_sample
from tunelab.recipes.lora.attention import choose_packing_mode
from tunelab.recipes.lora.batching import BatchStream, PackedLayout, PaddedLayout
from tunelab.recipes.lora.data import IGNORE_INDEX, ChatFormat, Sample, tokenize_file
from tunelab.recipes.lora.loss import forward_logits, loss_sum
from tunelab.recipes.tinymodel import build_tiny_model


@pytest.fixture(scope="module")
def samples(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    records = [advertisegen_sample.to_conversations(r) for r in advertisegen_sample.generate(12, seed=3)]
    path = write_jsonl(tmp_path_factory.mktemp("pack") / "train.json", records)
    return tokenize_file(path, tokenizer, ChatFormat(tokenizer), 64, 96).samples


@pytest.fixture(scope="module", params=["llama-sdpa", "llama-eager", "qwen2-sdpa", "glm-sdpa", "glm-eager"])
def model(request: pytest.FixtureRequest, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """glm: ChatGLM3 imported (its vocabulary holds the tiny Llama tokenizer's ids)."""
    kind, attn = request.param.split("-")
    path = tiny_model
    if kind == "glm":
        path = request.getfixturevalue("chatglm3_model")
    elif kind != "llama":
        path = build_tiny_model(tmp_path_factory.mktemp(kind) / kind, advertisegen_sample.corpus(100), kind)
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn).eval()


def test_rows_restart_positions_and_never_predict_across_samples(samples: list[Sample]) -> None:
    layout = PackedLayout(batch_size=2, pack_length=256, pad_id=0)
    plan = layout.plan(samples, range(len(samples)))[0]
    batch = layout.collate(samples, plan)
    assert batch.input_ids.shape == (2, 256) and batch.attention_mask is None
    for r, row in enumerate(plan):
        at = 0
        for i in row:
            n = len(samples[i].input_ids)
            assert batch.position_ids[r, at : at + n].tolist() == list(range(n))
            assert batch.input_ids[r, at : at + n].tolist() == samples[i].input_ids
            assert batch.labels[r, at] == IGNORE_INDEX
            at += n
        assert at <= 256 and (batch.labels[r, at:] == IGNORE_INDEX).all()
    assert batch.num_samples == sum(len(row) for row in plan) >= 3


@pytest.mark.parametrize("mode", ["position_ids", "mask"])
def test_packed_samples_do_not_attend_to_each_other(model: Any, samples: list[Sample], mode: str) -> None:
    """Logits of every sample in a packed row equal its logits alone; plain causal attention would not."""
    layout = PackedLayout(batch_size=1, pack_length=320, pad_id=0, mode=mode)
    plan = layout.plan(samples, range(len(samples)))[:1]
    row = plan[0][0]
    assert len(row) >= 3
    packed = layout.collate(samples, plan[0])
    with torch.no_grad():
        logits = forward_logits(model, packed)[0]
        leaky = forward_logits(model, replace(packed, attention_mask=torch.ones_like(packed.input_ids)))[0]
        at = 0
        for k, i in enumerate(row):
            n = len(samples[i].input_ids)
            alone = forward_logits(model, PaddedLayout(1, 0).collate(samples, [[i]]))[0]
            torch.testing.assert_close(logits[at : at + n], alone, atol=2e-5, rtol=1e-4)
            if k > 0:  # the control: without isolation a later sample's logits change
                assert (leaky[at : at + n] - alone).abs().max() > 1e-3
            at += n


def test_packing_does_not_change_the_loss(model: Any, samples: list[Sample]) -> None:
    packed_layout, padded_layout = PackedLayout(2, 256, 0), PaddedLayout(len(samples), 0)
    with torch.no_grad():
        packed_sum, packed_tokens = 0.0, 0
        for plan in packed_layout.plan(samples, range(len(samples))):
            batch = packed_layout.collate(samples, plan)
            packed_sum += float(loss_sum(model, batch))
            packed_tokens += batch.num_label_tokens
        padded = padded_layout.collate(samples, padded_layout.plan(samples, range(len(samples)))[0])
        padded_loss = float(loss_sum(model, padded)) / padded.num_label_tokens
    assert packed_tokens == padded.num_label_tokens
    assert packed_sum / packed_tokens == pytest.approx(padded_loss, rel=1e-5)


def test_the_probe_picks_an_isolating_mode(model: Any) -> None:
    mode = choose_packing_mode(model, torch.device("cpu"), contextlib.nullcontext)
    assert mode in ("position_ids", "mask")


def test_batch_stream_restarts_at_any_micro_batch(samples: list[Sample]) -> None:
    """12 samples in batches of 5: 3 micro-batches an epoch, reshuffled per epoch; resuming needs no state."""
    stream = BatchStream(samples, PaddedLayout(5, 0), seed=7)

    def take(start: int, n: int) -> list[tuple[float, list[list[int]]]]:
        return [(epoch, b.input_ids.tolist()) for epoch, b in islice(stream.iterate(start), n)]

    full = take(0, 9)
    assert take(5, 4) == full[5:9]
    assert [epoch for epoch, _ in full[:4]] == pytest.approx([1 / 3, 2 / 3, 1.0, 4 / 3])
    assert full[0][1] != full[3][1]  # epoch 2 has another order
