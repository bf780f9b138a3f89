"""Where LoRA goes: PEFT's default modules per model type, and ChatGLM3's LoRA on an imported `glm` model.

ChatGLM3's recipe puts LoRA on `query_key_value`, one fused Linear: one `lora_A` (r x hidden) and one
`lora_B` ((q + k + v) x r) per layer. An imported ChatGLM3 (transformers' `glm`) has separate
`q_proj`, `k_proj` and `v_proj`. With no `target_modules` (PEFT has no default for `glm`), or when
they name `query_key_value`, LoRA goes on those three and their `lora_A` is one shared Parameter per
layer and adapter (`share_qkv_lora_A`): the same rank, the same function and the same trainable
parameter count, r x (hidden + q + k + v) per layer, as the original. Its other names map too:
`dense` -> `o_proj`, `dense_h_to_4h` -> `gate_up_proj` (fused, as in ChatGLM3), `dense_4h_to_h` ->
`down_proj`.

What sharing means elsewhere:
- the model's `parameters()` yield the shared Parameter once, so the optimizer, gradient clipping,
  the data-parallel all-reduce (distributed.py) and the parameter counts see it once;
- PEFT's `save_pretrained` writes each module's own copy of `lora_A` (it clones aliased tensors
  for safetensors), so the adapter is a standard one that plain PEFT and vLLM load, untied;
- resuming copies saved values into the shared Parameter in place; `retie` checks that and re-ties
  where a loader replaced a Parameter;
- `lora_dropout`: ChatGLM3's fused module draws one dropout mask for its LoRA input; here q, k and
  v each draw their own (same rate). Training noise differs slightly, nothing else: evaluation, the
  loss without dropout and the saved adapter are the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunelab.recipes.lora.errors import CheckpointError

log = logging.getLogger(__name__)

QKV = ("q_proj", "k_proj", "v_proj")
CHATGLM3_NAMES = {  # ChatGLM3's module names -> the imported glm model's
    "query_key_value": QKV,
    "dense": ("o_proj",),
    "dense_h_to_4h": ("gate_up_proj",),
    "dense_4h_to_h": ("down_proj",),
}
SHARED_FLAG = "tunelab_shared_qkv_lora_A"  # set on a model whose q/k/v LoRA share lora_A


@dataclass(frozen=True)
class Targets:
    modules: list[str] | str
    shared_qkv: bool = False  # one lora_A per layer for q_proj, k_proj and v_proj


def resolve_targets(model_type: str, requested: list[str] | str | None, defaults: Sequence[str]) -> Targets:
    """The modules LoRA goes on: as configured, PEFT's default, or ChatGLM3's on a glm model."""
    if model_type != "glm":
        return Targets(requested or list(defaults))
    if requested is None:
        log.info("LoRA on q_proj, k_proj, v_proj with one shared lora_A: ChatGLM3's query_key_value")
        return Targets(list(QKV), shared_qkv=True)
    names = [requested] if isinstance(requested, str) and requested in CHATGLM3_NAMES else requested
    if isinstance(names, str):  # a regular expression: PEFT matches it as it is
        return Targets(names)
    mapped: list[str] = []
    for name in names:
        mapped += [m for m in CHATGLM3_NAMES.get(name, (name,)) if m not in mapped]
    renamed = {n: ", ".join(CHATGLM3_NAMES[n]) for n in names if n in CHATGLM3_NAMES}
    if renamed:
        log.info(
            "target_modules: ChatGLM3's names on the imported model: %s",
            "; ".join(f"{old} -> {new}" for old, new in renamed.items()),
        )
    return Targets(mapped, shared_qkv="query_key_value" in names)


def share_qkv_lora_A(model: torch.nn.Module) -> int:
    """Make k_proj's and v_proj's lora_A weight q_proj's Parameter, per attention block and adapter.

    Call it right after `get_peft_model` (before the optimizer is built); returns the blocks tied.
    """
    tied = 0
    for q, k, v in _qkv_blocks(model):
        for adapter in q.lora_A:
            shared = q.lora_A[adapter].weight
            for other in (k, v):
                other.lora_A[adapter].weight = shared
        tied += 1
    setattr(model, SHARED_FLAG, tied > 0)
    return tied


def retie(model: torch.nn.Module) -> None:
    """After loading weights: k/v's lora_A are q's Parameter again (and hold its values)."""
    if not getattr(model, SHARED_FLAG, False):
        return
    for q, k, v in _qkv_blocks(model):
        for adapter in q.lora_A:
            shared = q.lora_A[adapter].weight
            for other in (k, v):
                weight = other.lora_A[adapter].weight
                if weight is not shared:
                    if not torch.equal(weight.detach(), shared.detach()):
                        raise CheckpointError(
                            "the checkpoint's q_proj, k_proj and v_proj lora_A differ, but this run shares "
                            "one (ChatGLM3's query_key_value); pass `no` to start over"
                        )
                    other.lora_A[adapter].weight = shared


def _qkv_blocks(model: torch.nn.Module) -> list[tuple[Any, Any, Any]]:
    """(q_proj, k_proj, v_proj) LoRA layers of every attention block."""
    from peft.tuners.lora import LoraLayer

    blocks = []
    for module in model.modules():
        q, k, v = (getattr(module, name, None) for name in QKV)
        if all(isinstance(m, LoraLayer) for m in (q, k, v)):
            blocks.append((q, k, v))
    return blocks
