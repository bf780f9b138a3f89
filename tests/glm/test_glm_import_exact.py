"""The imported model computes what THUDM's ChatGLM3 code computes: logits, greedy tokens, loss, rope_ratio.

THUDM's model is the fixture's own `modeling_chatglm.py` (loaded by `thudm_model`); the imported one is
transformers' `GlmForCausalLM.from_pretrained` with no remote code. Both run in fp32 on CPU, where the
two are bit-for-bit equal on this fixture (max |diff| 0.0); the bound asserted is 1e-4. The fixture's
norm weights (ones) and biases (zeros) are randomized first, so that each of them must land in its place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GlmConfig, GlmForCausalLM
from transformers.models.glm import modeling_glm

from thudm_model import (
    build_chatglm_model,
    copy_checkpoint,
    greedy,
    left_padded,
    load_chatglm_model,
    randomize_norms_and_biases,
    use_rope_ratio_code,
)
from tunelab.recipes.glm.config import chatglm_shapes
from tunelab.recipes.glm.weights import convert_weights, glm_config, glm_shapes

STOP = [2, 1206, 1208]  # eos, <|user|>, <|observation|> of the fixture's tokenizer
TOLERANCE = 1e-4


def _prompts(lengths: tuple[int, ...], seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 1209, (n,), generator=generator).tolist() for n in lengths]


@pytest.fixture(scope="module")
def checkpoint(chatglm3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture with random norm weights and q/k/v biases (see `randomize_norms_and_biases`)."""
    return randomize_norms_and_biases(
        copy_checkpoint(chatglm3_dir, tmp_path_factory.mktemp("src") / "chatglm3")
    )


@pytest.fixture(scope="module")
def pair(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, GlmForCausalLM]:
    """(THUDM's model, the imported GlmForCausalLM), both fp32 with the checkpoint's weights."""
    dst = tmp_path_factory.mktemp("imported") / "model"
    convert_weights(checkpoint, dst, stop_token_ids=STOP)
    return load_chatglm_model(checkpoint), GlmForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()


@torch.no_grad()
def test_logits_equal_on_a_left_padded_batch(pair: tuple[Any, GlmForCausalLM]) -> None:
    # Left padding as ChatGLM3's tokenizer pads for generation: both models get the same attention mask
    # and the same position_ids (counting real tokens from 0), so every real token sees the same context
    # at the same position in both. Pad positions are compared nowhere: THUDM lets a pad query attend to
    # everything (to avoid NaN) while transformers masks it, and neither is used.
    thudm, glm = pair
    batch = left_padded(_prompts((7, 19, 12, 30)))
    expected = thudm(**batch, use_cache=False).logits
    actual = glm(**batch).logits
    real = batch["attention_mask"].bool()
    assert (actual - expected)[real].abs().max().item() <= TOLERANCE
    # and without padding or explicit positions (THUDM's causal SDPA path, transformers' default positions)
    ids = torch.tensor(_prompts((25,), seed=1))
    assert (glm(input_ids=ids).logits - thudm(input_ids=ids).logits).abs().max().item() <= TOLERANCE


def test_greedy_generation_gives_the_same_tokens(pair: tuple[Any, GlmForCausalLM]) -> None:
    # THUDM's side decodes by hand (its generate() predates transformers 5's caches; see thudm_model);
    # the imported model uses transformers' own generate() with its KV cache, as serving would.
    thudm, glm = pair
    for prompt in _prompts((3, 9, 17, 40), seed=2):
        expected = greedy(thudm, prompt, new_tokens=24)
        generated = glm.generate(
            torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        assert generated[0, len(prompt) :].tolist() == expected


@torch.no_grad()
def test_loss_with_masked_labels_is_equal(pair: tuple[Any, GlmForCausalLM]) -> None:
    # THUDM's forward shifts labels itself (token t predicts t+1) and averages cross-entropy over labels
    # that are not -100, as transformers' causal-LM loss does: the same labels go to both models. The
    # batch is right-padded, as the recipe trains: pads come after every real token, labelled -100.
    thudm, glm = pair
    prompts = _prompts((11, 26, 18), seed=3)
    width = max(map(len, prompts))
    ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
    labels = torch.where(
        mask.bool() & (torch.rand(ids.shape, generator=torch.Generator().manual_seed(5)) < 0.7), ids, -100
    )
    expected = thudm(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    actual = glm(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert abs(actual.item() - expected.item()) <= TOLERANCE


@torch.no_grad()
def test_rope_ratio_maps_to_rope_theta(checkpoint: Path, tmp_path: Path) -> None:
    # chatglm3-6b-32k's config has rope_ratio and its code multiplies the rotary base by it; the fixture's
    # code (chatglm3-6b's) has no rope_ratio, so the copy gets the 32k revision's rotary lines.
    src = copy_checkpoint(checkpoint, tmp_path / "chatglm3-32k", rope_ratio=50)
    use_rope_ratio_code(src)
    convert_weights(src, tmp_path / "imported", stop_token_ids=STOP)
    config = json.loads((tmp_path / "imported" / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 500000.0

    thudm = load_chatglm_model(src)
    glm = GlmForCausalLM.from_pretrained(tmp_path / "imported", dtype=torch.float32).eval()
    ids = torch.tensor(_prompts((300,), seed=4))  # positions up to 299, where the base matters
    expected = thudm(input_ids=ids, use_cache=False).logits[:, 100:]
    assert (glm(input_ids=ids).logits[:, 100:] - expected).abs().max().item() <= TOLERANCE
    # the check can fail: THUDM's model without rope_ratio differs there by far more than the tolerance
    plain = load_chatglm_model(checkpoint)(input_ids=ids, use_cache=False).logits[:, 100:]
    assert (plain - expected).abs().max().item() > 10 * TOLERANCE


def test_full_size_config_maps_to_chatglm3_6b(chatglm3_dir: Path) -> None:
    full = json.loads((chatglm3_dir / "config.full-size.json").read_text())
    config, generation = glm_config(full, stop_token_ids=[2, 64795, 64797])
    assert {k: config[k] for k in config if k not in ("architectures", "rope_parameters")} == {
        "model_type": "glm",
        "vocab_size": 65024,
        "hidden_size": 4096,
        "intermediate_size": 13696,
        "num_hidden_layers": 28,
        "num_attention_heads": 32,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "hidden_act": "silu",
        "attention_bias": True,
        "attention_dropout": 0.0,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-05,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "dtype": "float16",
    }
    assert config["architectures"] == ["GlmForCausalLM"]
    assert config["rope_parameters"] == {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
    }
    assert generation == {"eos_token_id": [2, 64795, 64797], "pad_token_id": 0}

    # Both models on the meta device (shapes only, no memory): the same parameter count, and each
    # model's tensors are exactly the shapes the converter expects on its side.
    with torch.device("meta"):
        glm = GlmForCausalLM(GlmConfig(**config))
    thudm = build_chatglm_model(chatglm3_dir, config=full, dtype=torch.float16, device="meta")
    glm_count = sum(p.numel() for p in glm.parameters())
    thudm_count = sum(p.numel() for p in thudm.parameters())
    assert glm_count == thudm_count == 6_243_584_000
    assert {n: tuple(t.shape) for n, t in glm.state_dict().items()} == glm_shapes(full)
    assert {n: tuple(t.shape) for n, t in thudm.state_dict().items()} == chatglm_shapes(full)


@torch.no_grad()
def test_fp16_differs_only_in_rms_norm_rounding(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In fp16 the two differ by rounding only, from one place: THUDM's RMSNorm multiplies by the weight in
    # fp32 and rounds once, transformers' rounds to fp16 and then multiplies. Measured here: max |diff|
    # 4.9e-4, about THUDM's own fp16-vs-fp32 error (4.1e-4); with THUDM's order patched in, 0.0.
    src = copy_checkpoint(checkpoint, tmp_path / "fp16", torch_dtype="float16")
    state = {n: t.half() for n, t in load_file(src / "model.safetensors").items()}
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    convert_weights(src, tmp_path / "imported", stop_token_ids=STOP)
    glm = GlmForCausalLM.from_pretrained(tmp_path / "imported").eval()  # dtype "auto": fp16 from config.json
    assert glm.dtype == torch.float16
    batch = left_padded(_prompts((7, 19, 12, 30)))
    real = batch["attention_mask"].bool()
    expected = load_chatglm_model(src, dtype=torch.float16)(**batch, use_cache=False).logits.float()
    fp32 = load_chatglm_model(src)(**batch, use_cache=False).logits
    own_error = (expected - fp32)[real].abs().max().item()
    assert (glm(**batch).logits.float() - expected)[real].abs().max().item() <= 2 * own_error

    def thudm_order(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        normed = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return (self.weight * normed).to(hidden_states.dtype)

    monkeypatch.setattr(modeling_glm.GlmRMSNorm, "forward", thudm_order)
    assert torch.equal(glm(**batch).logits.float()[real], expected[real])
