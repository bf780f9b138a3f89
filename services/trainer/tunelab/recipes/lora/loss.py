"""The training loss: next-token cross-entropy on trained (assistant) tokens only, summed in fp32.

Only the positions that predict a trained token go through the output layer, in chunks; with
activation checkpointing each chunk's logits are recomputed in backward instead of kept, so the
[tokens, vocab] fp32 logits (5 GB for 20k tokens of a 65k vocabulary) never exist at once. Models
whose logits are not a plain linear map of the last hidden state (soft-capping, logit scales, a LoRA
on the output layer) take the plain path: full logits, then the same selection.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunelab.recipes.lora.batching import Batch

CHUNK_ELEMENTS = 1 << 26  # logits per chunk (64M: 256 MB in fp32)
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def loss_sum(model: torch.nn.Module, batch: Batch, recompute: bool = True) -> torch.Tensor:
    """Summed cross-entropy over the batch's label tokens (fp32), from one forward pass.

    `recompute=False` keeps each chunk's fp32 log-probabilities for backward instead of recomputing
    them (about 4 bytes x vocabulary per trained token): a little faster where memory is plentiful.
    """
    head = output_head(model)
    if head is None:
        logits = forward_logits(model, batch)
        flat = logits.reshape(-1, logits.shape[-1]).index_select(0, batch.loss_index)
        return F.cross_entropy(flat.float(), batch.loss_targets, reduction="sum")
    decoder, weight = head
    hidden = decoder(**model_inputs(model, batch)).last_hidden_state
    if hidden.shape[:2] != batch.input_ids.shape:
        raise ValueError(f"hidden states {tuple(hidden.shape)} are not [batch, length, hidden]")
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.loss_index)
    return chunked_cross_entropy(selected, weight, batch.loss_targets, recompute)


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, recompute: bool = True
) -> torch.Tensor:
    """sum CE(hidden @ weight.T, targets), a chunk of rows at a time; backward recomputes each chunk."""
    if hidden.shape[0] == 0:
        return hidden.sum().float() * 0.0  # keeps the graph for backward()
    chunk = max(128, min(8192, CHUNK_ELEMENTS // weight.shape[0]))
    pieces = zip(hidden.split(chunk), targets.split(chunk), strict=True)
    if not torch.is_grad_enabled() or not recompute:
        return sum((_chunk_loss(h, weight, t) for h, t in pieces), torch.zeros((), device=hidden.device))
    total = torch.zeros((), device=hidden.device)
    for h, t in pieces:
        total = total + checkpoint(_chunk_loss, h, weight, t, use_reentrant=False)
    return total


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")


def output_head(model: Any) -> tuple[torch.nn.Module, torch.Tensor] | None:
    """(decoder, output weight) where logits = last_hidden_state @ weight.T exactly, else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder, get_output = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    if get_decoder is None or get_output is None:
        return None
    try:
        decoder, head = get_decoder(), get_output()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    config = getattr(base, "config", None)
    if (
        not type(base).__module__.startswith("transformers.")  # remote code: layouts vary ([seq, batch])
        or decoder is base
        or type(head) is not torch.nn.Linear
        or head.bias is not None
        or any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS)
    ):
        return None
    return decoder, head.weight


def model_inputs(model: Any, batch: Batch) -> dict[str, Any]:
    """Keyword arguments of the model's forward for this batch (varlen offsets included)."""
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    kwargs["use_cache"] = False
    if batch.position_ids is not None:
        kwargs["position_ids"] = batch.position_ids
    mask = batch.attention_mask
    if mask is not None and mask.dim() == 4:
        kwargs["attention_mask"] = mask.to(_param_dtype(model))
    if batch.cu_seqlens is not None:
        torch._dynamo.maybe_mark_dynamic(batch.cu_seqlens, 0)  # the segment count changes every batch
        kwargs |= {"cu_seq_lens_q": batch.cu_seqlens, "cu_seq_lens_k": batch.cu_seqlens}
        kwargs |= {"max_length_q": batch.max_seqlen, "max_length_k": batch.max_seqlen}
        # An all-ones padding mask: transformers then builds no packed-sequence mask for the row.
        kwargs["attention_mask"] = torch.ones_like(batch.input_ids)
    return kwargs


def forward_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    return model(**model_inputs(model, batch)).logits  # type: ignore[no-any-return]


def _param_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())
