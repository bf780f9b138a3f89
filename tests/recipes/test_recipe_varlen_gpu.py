"""PyTorch's FlashAttention varlen kernel itself, on an NVIDIA GPU (skipped elsewhere, with the reason).

The CPU tests run the same plumbing with the exact reference and check the kernel call's signature
against a stand-in (test_recipe_speed.py); here the recipe's own attention selection picks the real
kernel, packed batches go through it forward and backward, and each packed sample's logits equal
those of the sample run alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from recipehelpers import write_jsonl
from tunelab.recipes import advertisegen_sample
from tunelab.recipes.lora import attention
from tunelab.recipes.lora.attention import NAME, choose_packing_mode, varlen_available
from tunelab.recipes.lora.batching import PackedLayout, PaddedLayout
from tunelab.recipes.lora.config import PeftSettings
from tunelab.recipes.lora.data import ChatFormat, Sample, tokenize_file
from tunelab.recipes.lora.loss import forward_logits, loss_sum
from tunelab.recipes.lora.model import apply_lora, load_model

pytestmark = pytest.mark.gpu

PACK = 330


def bf16() -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16)


def base_model(path: Path, device: torch.device) -> Any:
    """The model as the recipe loads it on a GPU: in bf16 (the kernel takes bf16 or fp16 only)."""
    config = AutoConfig.from_pretrained(path)
    return load_model(path, config, device, torch.bfloat16, trust_remote_code=False, attn_implementation=None)


@pytest.fixture
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the FlashAttention varlen kernel runs only on an NVIDIA GPU")
    if attention._FLASH is None:
        pytest.skip(f"PyTorch {torch.__version__} has no torch.nn.attention.varlen kernel")
    return torch.device("cuda")


@pytest.fixture
def kernel_calls(cuda: torch.device, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, ...]]]:
    """The real kernel, with each call's query shape recorded on the way through."""
    assert attention._FLASH is not None
    real, causal, takes_gqa = attention._FLASH
    calls: list[tuple[int, ...]] = []

    def recorded(q: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(tuple(q.shape))
        return real(q, *args, **kwargs)

    monkeypatch.setattr(attention, "_FLASH", (recorded, causal, takes_gqa))
    yield calls


@pytest.fixture(scope="module")
def samples(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    records = [advertisegen_sample.to_conversations(r) for r in advertisegen_sample.generate(24, seed=5)]
    path = write_jsonl(tmp_path_factory.mktemp("varlen-gpu") / "train.json", records)
    return tokenize_file(path, tokenizer, ChatFormat(tokenizer), 64, 96).samples


def test_the_selection_picks_the_kernel_and_packed_samples_stay_apart(
    tiny_model: Path, samples: list[Sample], cuda: torch.device, kernel_calls: list[tuple[int, ...]]
) -> None:
    model = base_model(tiny_model, cuda).eval()
    assert varlen_available(cuda)
    assert choose_packing_mode(model, cuda, bf16, "auto") == "varlen"  # auto tries varlen first
    assert model.config._attn_implementation == NAME
    assert kernel_calls, "the packing probe did not go through the GPU kernel"

    layout = PackedLayout(batch_size=2, pack_length=PACK, pad_id=0, mode="varlen", segment_cap=161)
    plan = layout.plan(samples, range(len(samples)))[0]
    batch = layout.collate(samples, plan)
    probed = len(kernel_calls)
    with torch.no_grad(), bf16():
        logits = forward_logits(model, batch.to(cuda))[0].float()
        assert len(kernel_calls) > probed
        assert kernel_calls[-1][0] == batch.input_ids.numel()  # one row of tokens: [tokens, heads, dim]
        for r, row in enumerate(plan):
            at = r * PACK
            for i in row:
                n = len(samples[i].input_ids)
                alone = PaddedLayout(1, 0).collate(samples, [[i]]).to(cuda)
                expected = forward_logits(model, alone)[0].float()  # no offsets: masked SDPA
                # bf16 kernels differ by rounding; attending across samples moves logits by far more
                torch.testing.assert_close(logits[at : at + n], expected, atol=5e-2, rtol=5e-2)
                at += n


def test_lora_training_steps_run_through_the_kernel(
    tiny_model: Path, samples: list[Sample], cuda: torch.device, kernel_calls: list[tuple[int, ...]]
) -> None:
    torch.manual_seed(0)
    model = apply_lora(base_model(tiny_model, cuda), PeftSettings(r=8, lora_alpha=32)).train()
    assert choose_packing_mode(model, cuda, bf16, "varlen") == "varlen"
    layout = PackedLayout(batch_size=2, pack_length=PACK, pad_id=0, mode="varlen", segment_cap=161)
    batch = layout.collate(samples, layout.plan(samples, range(len(samples)))[0]).to(cuda)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-2)
    losses = []
    for _ in range(3):
        calls = len(kernel_calls)
        with bf16():
            loss = loss_sum(model, batch) / batch.num_label_tokens
        loss.backward()
        assert len(kernel_calls) > calls
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses
