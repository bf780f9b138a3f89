"""Attention for packed rows, and the probe that proves packed samples never see each other.

"varlen" attention: a packed micro-batch is one row of back-to-back samples plus `cu_seq_lens_q`
(int32 offsets where each sample starts, as in FlashAttention); every sample attends causally to
itself only. It is registered with transformers' `AttentionInterface` as `tunelab_varlen`, so any
model written against that interface (Llama, Qwen2, Mistral, ...) runs it unchanged:
- on a GPU, PyTorch's FlashAttention varlen kernel (`torch.nn.attention.varlen`): no mask is built,
  and the work grows with the samples' lengths, not with the row's;
- elsewhere, a reference that runs SDPA once per sample (CPU tests prove the plumbing with it).
Calls without `cu_seq_lens_q` (evaluation, generation, the probe's references) go to transformers'
SDPA with the usual masks, so the model stays a normal model.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from tunelab.recipes.lora.batching import Autocast, PackedLayout, PaddedLayout
from tunelab.recipes.lora.data import Sample
from tunelab.recipes.lora.errors import ModelError
from tunelab.recipes.lora.loss import forward_logits

log = logging.getLogger(__name__)

NAME = "tunelab_varlen"
MODES = ("varlen", "position_ids", "mask")


def _flash_varlen() -> tuple[Any, dict[str, Any], bool] | None:
    """(varlen_attn, causal kwargs, takes enable_gqa) for this PyTorch, or None where it has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}  # 2.11+ / 2.10
    return varlen_attn, causal, "enable_gqa" in params


_FLASH = _flash_varlen()


def varlen_available(device: torch.device) -> bool:
    return device.type == "cuda" and _FLASH is not None


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, H, L, D], as transformers passes it
    key: torch.Tensor,  # [B, Hkv, L, D]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    for name in ("cu_seq_lens_k", "max_length_k"):
        kwargs.pop(name, None)
    if cu_seq_lens_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(  # type: ignore[no-any-return]
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    b, heads, length, dim = query.shape
    q = query.transpose(1, 2).reshape(b * length, heads, dim)
    k = key.transpose(1, 2).reshape(b * length, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(b * length, value.shape[1], dim)
    if q.is_cuda and _FLASH is not None:
        out = _flash(q, k, v, cu_seq_lens_q, max_length_q or length, scaling)
    else:
        out = varlen_reference(q, k, v, cu_seq_lens_q, scaling if scaling is not None else dim**-0.5)
    return out.view(b, length, heads, dim), None


def _flash(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int, scale: float | None
) -> torch.Tensor:
    assert _FLASH is not None
    varlen_attn, causal, takes_gqa = _FLASH
    kwargs = dict(causal, scale=scale)
    if k.shape[1] != q.shape[1]:
        if takes_gqa:
            kwargs["enable_gqa"] = True
        else:  # older PyTorch: one K/V head per query head
            k, v = (_repeat_heads(t, q.shape[1] // t.shape[1]) for t in (k, v))
    return varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max_len, max_len, **kwargs)


def _repeat_heads(t: torch.Tensor, times: int) -> torch.Tensor:
    tokens, heads, dim = t.shape
    return t[:, :, None, :].expand(tokens, heads, times, dim).reshape(tokens, heads * times, dim)


@torch.library.custom_op("tunelab::varlen_reference", mutates_args=())
def varlen_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal SDPA sample by sample: slow, exact, runs anywhere.

    An opaque operator like the GPU kernel, so compiled layers trace the same graph on a CPU.
    """
    return _reference(q, k, v, cu, scale)


def _reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float
) -> torch.Tensor:
    outs = []
    for start, end in itertools.pairwise(cu.tolist()):
        if end > start:
            qs, ks, vs = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))
            out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
            outs.append(out[0].transpose(0, 1))
    return torch.cat(outs)


@varlen_reference.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.empty_like(q)


def _save(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    q, k, v, cu, ctx.scale = inputs
    ctx.save_for_backward(q, k, v, cu)


def _grad(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    q, k, v, cu = ctx.saved_tensors
    return (*varlen_reference_backward(q, k, v, cu, ctx.scale, grad), None, None)


@torch.library.custom_op("tunelab::varlen_reference_backward", mutates_args=())
def varlen_reference_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    vjp: Any = torch.func.vjp(lambda q, k, v: _reference(q, k, v, cu, scale), q, k, v)[1]
    dq, dk, dv = vjp(grad)
    return dq, dk, dv


@varlen_reference_backward.register_fake
def _(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


varlen_reference.register_autograd(_grad, setup_context=_save)


def use_attention(model: Any, name: str) -> str:
    """Switch the model's attention implementation; returns the previous one."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if name == NAME:
        AttentionInterface.register(NAME, varlen_attention)
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # for unpacked calls
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = str(base.config._attn_implementation)
    if previous != name:
        base.set_attn_implementation(name)
        if base.config._attn_implementation != name:
            raise ValueError(f"{type(base).__name__} does not take a pluggable attention implementation")
    return previous


def choose_packing_mode(
    model: torch.nn.Module, device: torch.device, context: Autocast, wanted: str = "auto"
) -> str:
    """The first packing mode under which packed samples provably do not see each other on this model.

    auto tries varlen first where the GPU kernel exists, then position_ids, then an explicit mask.
    """
    if wanted != "auto":
        modes: tuple[str, ...] = (wanted,)
    else:
        modes = MODES if varlen_available(device) else MODES[1:]
    results = {}
    for mode in modes:
        previous = None
        try:
            if mode == "varlen":
                previous = use_attention(model, NAME)
            isolated, leak = packing_probe(model, device, context, mode)
            if isolated <= 0.1 * leak or isolated == leak == 0:
                return mode
            results[mode] = (
                f"a packed sample's logits moved by {isolated:.3g} on average "
                f"(cross-attention moves them {leak:.3g})"
            )
        except (TypeError, ValueError, RuntimeError, KeyError) as e:  # the model refuses these inputs
            results[mode] = f"failed ({type(e).__name__}: {e})"
        if previous is not None:
            use_attention(model, previous)
    detail = "; ".join(f"{mode}: {why}" for mode, why in results.items())
    raise ModelError(
        f"packing would let samples attend to each other on this model ({detail}); set tunelab.packing: false"
    )


@torch.no_grad()
def packing_probe(
    model: torch.nn.Module, device: torch.device, context: Autocast, mode: str
) -> tuple[float, float]:
    """Mean |logit change| of sample B when packed after sample A: (isolated, with cross-attention).

    Means, not maxima, and a 10x margin in `choose_packing_mode`: bf16 kernels differ from one
    another by rounding, while attending to another sample changes the logits by orders more.
    """
    vocab = model.get_input_embeddings().weight.shape[0]  # type: ignore[operator,union-attr]
    gen = torch.Generator().manual_seed(0)
    a, b = (
        torch.randint(vocab, (24,), generator=gen).tolist(),
        torch.randint(vocab, (9,), generator=gen).tolist(),
    )
    samples = [Sample(a, a, 0, ""), Sample(b, b, 0, "")]
    alone = PaddedLayout(1, 0).collate(samples, [[1]])
    packed = PackedLayout(1, len(a) + len(b), 0, mode).collate(samples, [[0, 1]])
    leaky = replace(packed, attention_mask=torch.ones_like(packed.input_ids), cu_seqlens=None)
    was_training = model.training
    model.eval()
    try:
        with context(), eager():
            ref = forward_logits(model, alone.to(device))[0].float()
            iso = forward_logits(model, packed.to(device))[0, len(a) :].float()
            mixed = forward_logits(model, leaky.to(device))[0, len(a) :].float()
    finally:
        model.train(was_training)
    return float((iso - ref).abs().mean()), float((mixed - ref).abs().mean())


def eager() -> contextlib.AbstractContextManager[Any]:
    """Run compiled layers eagerly (evaluation, generation, probes): compiling them for these is waste."""
    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance is not None else contextlib.nullcontext()
