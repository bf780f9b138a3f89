"""The loss checks: the imported model computes what THUDM's computes, and the recipe's loss is the model's.

1. THUDM's model vs the imported model, the same 8 samples in one padded batch as the baseline collates
   them (left padding, THUDM's position_ids), the models' own `labels=` loss: in fp32 (TF32 off; the
   weights are the same fp16 values widened, so only summation order differs: the target is a relative
   difference of 1e-4), and in bf16 for information (rounding differs between the two codes there).
2. The recipe's loss on the imported model (one varlen-packed row, chunked, loss on answer tokens only)
   vs transformers' on the padded batch, in bf16 with autocast on a GPU (target 1 %).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from chatglm import batch_loss


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Plain fp32 matrix products (no TF32) for the duration."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def thudm_losses(
    model: Any, batch: dict[str, torch.Tensor], device: torch.device, bf16: bool
) -> dict[str, float]:
    """THUDM's model's loss on `batch` in fp32 and (on a GPU) bf16; leaves the model in the last dtype."""
    with exact_fp32():
        losses = {"fp32": batch_loss(model.float(), batch, device)}
    if bf16:
        losses["bf16"] = batch_loss(model.to(torch.bfloat16), batch, device)
    return losses


def load_imported(model_dir: Path, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if device.type == "cuda":
        kwargs["device_map"] = {"": device.index or 0}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.config.use_cache = False
    return model


def imported_checks(
    model_dir: Path,
    thudm: dict[str, float],
    batch: dict[str, torch.Tensor],
    samples: list[Any],
    pad_id: int,
    device: torch.device,
    autocast: Callable[[], Any],
) -> dict[str, Any]:
    """Both checks on the imported model (loaded here in fp32, then cast to bf16 on a GPU)."""
    model = load_imported(model_dir, device)
    with exact_fp32():
        fp32 = batch_loss(model, batch, device)
    result: dict[str, Any] = {
        "thudm_vs_imported": {
            "samples": int(batch["input_ids"].shape[0]),
            "thudm_fp32": thudm["fp32"],
            "imported_fp32": fp32,
            "relative_difference_fp32": abs(fp32 - thudm["fp32"]) / abs(thudm["fp32"]),
        }
    }
    if "bf16" in thudm:
        model.to(torch.bfloat16)
        bf16 = batch_loss(model, batch, device)
        result["thudm_vs_imported"] |= {
            "thudm_bf16": thudm["bf16"],
            "imported_bf16": bf16,
            "relative_difference_bf16": abs(bf16 - thudm["bf16"]) / abs(thudm["bf16"]),
        }
    result["recipe_vs_transformers"] = recipe_check(model, batch, samples, pad_id, device, autocast)
    del model
    return result


def recipe_check(
    model: Any,
    batch: dict[str, torch.Tensor],
    samples: list[Any],
    pad_id: int,
    device: torch.device,
    autocast: Callable[[], Any],
) -> dict[str, float]:
    """The same samples' mean loss by transformers (padded, labels=) and by the recipe (varlen, chunked)."""
    from tunelab.recipes.lora.attention import NAME, use_attention
    from tunelab.recipes.lora.batching import PackedLayout
    from tunelab.recipes.lora.loss import loss_sum

    rows = samples[: batch["input_ids"].shape[0]]
    length = sum(len(s.input_ids) for s in rows)
    layout = PackedLayout(1, length, pad_id, "varlen", segment_cap=max(len(s.input_ids) for s in rows))
    packed = layout.collate(rows, [list(range(len(rows)))])
    hf = batch_loss(model, batch, device)
    model.eval()
    with torch.no_grad():
        previous = use_attention(model, NAME)
        with autocast():
            ours = float(loss_sum(model, packed.to(device))) / packed.num_label_tokens
        use_attention(model, previous)
    model.train()
    return {"transformers_loss": hf, "tunelab_loss": ours, "relative_difference": abs(ours - hf) / abs(hf)}
