"""Speed profiles: which fast paths a run takes, decided once in `setup` from the config and the device.

- standard: ChatGLM3's behaviour: padded batches (or packing as configured), eager PyTorch.
- fast: one packed row of N tokens per micro-batch, N sized to the free GPU memory (at most 16384);
  every decoder layer compiled; no activation checkpointing. For throughput.
- low_memory: one packed row of 8192 tokens (fewer if memory is short), compiled, and every
  decoder layer's activations recomputed in backward. For a 24 GB card.
- auto (the default): standard on a CPU; on a GPU fast when the free memory holds 4096 tokens of
  activations, else low_memory.

Packed profiles use varlen attention where the GPU has the kernel (attention.py) and always the
chunked loss (loss.py). Any key set explicitly (tunelab.packing, pack_length, compile, packing_mode,
training_args.gradient_checkpointing) wins over the profile. In the packed profiles a micro-batch is
one row of N tokens, so per_device_train_batch_size does not apply; a step holds N / (mean sample
length) samples instead (the `start` event reports it), so fewer steps cover the same data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import torch

from tunelab.recipes.lora.attention import choose_packing_mode, varlen_available
from tunelab.recipes.lora.batching import Autocast, Layout, PackedLayout, PaddedLayout
from tunelab.recipes.lora.config import RecipeConfig
from tunelab.recipes.lora.errors import ModelError

log = logging.getLogger(__name__)

FAST_MAX_TOKENS = 16384
LOW_MEMORY_TOKENS = 8192
MIN_FAST_TOKENS = 4096
RESERVE_BYTES = 3 * 2**30  # CUDA workspaces, the loss chunks, allocator slack


@dataclass(frozen=True)
class SpeedPlan:
    profile: str  # the resolved profile: fast, low_memory or standard
    packing: bool
    rows: int  # packed rows (or padded samples) per micro-batch
    pack_length: int  # tokens per packed row
    compile: bool
    checkpointing: bool

    def describe(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "compile": self.compile,
            "gradient_checkpointing": self.checkpointing,
            "micro_batch_tokens": self.rows * self.pack_length if self.packing else None,
        }


def plan_speed(
    cfg: RecipeConfig, device: torch.device, model_config: Any, free_bytes: int | None
) -> SpeedPlan:
    """Resolve tunelab.profile (and the keys set explicitly) for this device."""
    o, args = cfg.tunelab, cfg.training_args
    per_token = activation_bytes_per_token(model_config)
    fast_tokens = _fit(free_bytes, per_token, FAST_MAX_TOKENS)
    profile = o.profile
    if profile == "auto":
        if device.type != "cuda":
            profile = "standard"
        else:
            profile = "fast" if fast_tokens >= MIN_FAST_TOKENS else "low_memory"
    packed = profile in ("fast", "low_memory")
    tokens = fast_tokens if profile == "fast" else LOW_MEMORY_TOKENS
    if profile == "low_memory" and free_bytes is not None:
        tokens = min(tokens, _fit(free_bytes, checkpointed_bytes_per_token(model_config), tokens))
    tokens = max(tokens, cfg.max_length)
    packing = o.packing if o.packing is not None else packed
    if o.pack_length is not None or not packed:
        rows, length = args.per_device_train_batch_size, o.pack_length or cfg.max_length
    else:
        rows, length = 1, tokens
    checkpointing = args.gradient_checkpointing
    return SpeedPlan(
        profile=profile,
        packing=packing,
        rows=rows,
        pack_length=length,
        compile=o.compile if o.compile is not None else packed and device.type == "cuda",
        checkpointing=checkpointing if checkpointing is not None else profile == "low_memory",
    )


def choose_layout(
    plan: SpeedPlan, cfg: RecipeConfig, model: Any, device: torch.device, autocast: Autocast, pad_id: int
) -> tuple[Layout, SpeedPlan]:
    """The batch layout, after proving on the model that packed samples stay apart; the final plan.

    A profile packs with varlen attention only (a mask over its long rows would cost more than
    padding saves) and falls back to padded batches where the model can't (remote model code);
    `tunelab.packing: true` tries every mode and fails if none keeps samples apart.
    """
    options, mode = cfg.tunelab, None
    wanted = options.packing_mode
    if options.packing is None and wanted == "auto":
        wanted = "varlen"  # a profile packs long rows: only where attention is per sample, not masked
    if plan.packing and wanted == "varlen" and device.type == "cuda" and not varlen_available(device):
        log.warning("this PyTorch has no varlen attention kernel (torch.nn.attention.varlen): padded batches")
    elif plan.packing:
        try:
            mode = choose_packing_mode(model, device, autocast, wanted)
        except ModelError:
            if options.packing:
                raise
            log.warning("profile %s: this model can't pack samples safely; padded batches", plan.profile)
    # Compiling is proven with varlen packing; elsewhere (remote model code) only when asked for.
    compiled = options.compile if options.compile is not None else plan.compile and mode == "varlen"
    plan = replace(plan, packing=mode is not None, compile=compiled)
    if mode is None:
        return PaddedLayout(cfg.training_args.per_device_train_batch_size, pad_id), plan
    log.info(
        "profile %s: packing samples into %d row(s) of %d tokens (%s)",
        plan.profile,
        plan.rows,
        plan.pack_length,
        mode,
    )
    return PackedLayout(plan.rows, plan.pack_length, pad_id, mode, segment_cap=cfg.max_length), plan


def activation_bytes_per_token(config: Any) -> int:
    """What backward keeps per token without checkpointing: about (17h + 3i) bf16 values per layer.

    Counted for a Llama-style layer with LoRA on the attention projections (inputs of the norms, of
    the LoRA branches and of attention, the MLP's gate/up products); compiled layers keep less.
    """
    h, i, layers = _dims(config)
    return layers * 2 * (17 * h + 3 * i)


def checkpointed_bytes_per_token(config: Any) -> int:
    """With every layer checkpointed: each layer's input, plus one layer's activations being recomputed."""
    h, i, layers = _dims(config)
    return layers * 2 * h + 2 * 2 * (17 * h + 3 * i)


def _dims(config: Any) -> tuple[int, int, int]:
    h = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 4096)
    i = int(getattr(config, "intermediate_size", 0) or getattr(config, "ffn_hidden_size", 0) or 4 * h)
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "num_layers", 0) or 32)
    return h, i, layers


def _fit(free_bytes: int | None, per_token: int, cap: int) -> int:
    """Tokens (a multiple of 1024, at most `cap`) whose activations fit 85% of the free memory."""
    if free_bytes is None:
        return cap
    tokens = int(max(free_bytes - RESERVE_BYTES, 0) * 0.85 // max(per_token, 1))
    return min(cap, tokens // 1024 * 1024)


def free_gpu_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def compile_layers(model: Any, backend: str = "inductor") -> int:
    """torch.compile every decoder layer in place (one graph, reused by all layers); returns how many.

    Compiling layer by layer keeps compile time to one layer's, keeps parameter names (adapters save
    and load as before) and leaves the loss and the optimizer in plain PyTorch.
    """
    import torch._dynamo

    layers = decoder_layers(model)
    if not layers:
        log.warning("no decoder layers found to compile; running uncompiled")
        return 0
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "enable_input_require_grads"):
        base.enable_input_require_grads()  # the first layer's input then looks like the others': one graph
    for layer in layers:
        layer.compile(backend=backend)
    return len(layers)


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The repeated blocks: the longest ModuleList of the model."""
    lists = [list(m) for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]
    return max(lists, key=len) if lists else []
