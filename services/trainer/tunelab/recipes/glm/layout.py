"""A native GLM model -> THUDM's ChatGLM3 layout on disk: the import run backwards, for base models.

Writes what a download of THUDM/chatglm3-6b holds of the model itself: config.json with THUDM's keys
(the same key set, `auto_map` included, plus `rope_ratio` when rope_theta is not 10000) and
model.safetensors with THUDM's tensor names and shapes: q/k/v re-fused into query_key_value, and
`transformer.rotary_pos_emb.inv_freq` computed as THUDM's RotaryEmbedding stores it. Not written:
THUDM's code and tokenizer (the caller adds a tokenizer.model; the project never ships THUDM's code).

The demo writes a tiny stand-in "as if downloaded" with it; tests use it for round trips
(`write_chatglm3_layout` -> `convert_weights` -> the same tensors) and for bad inputs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tunelab.recipes.glm.config import CONFIG
from tunelab.recipes.glm.errors import CheckpointError
from tunelab.recipes.glm.weights import INV_FREQ, glm_shapes

_AUTO_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
}
_BACK = {  # GLM suffix (per layer) -> THUDM suffix; q/k/v are fused separately
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attn.o_proj.weight": "self_attention.dense.weight",
    "mlp.gate_up_proj.weight": "mlp.dense_h_to_4h.weight",
    "mlp.down_proj.weight": "mlp.dense_4h_to_h.weight",
}
_TOP = {
    "model.embed_tokens.weight": "transformer.embedding.word_embeddings.weight",
    "model.norm.weight": "transformer.encoder.final_layernorm.weight",
    "lm_head.weight": "transformer.output_layer.weight",
}


def write_chatglm3_layout(
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    glm_config: Mapping[str, Any],
    out_dir: Path,
    *,
    name_or_path: str = "THUDM/chatglm3-6b",
) -> None:
    """Write `model` (a GlmForCausalLM or its state dict) into `out_dir` as THUDM's files.

    `glm_config` is the model's config as a dict (config.json, or `model.config.to_dict()`).
    Raises CheckpointError when the config or a tensor has no ChatGLM3 equivalent.
    """
    state = dict(model.state_dict() if isinstance(model, torch.nn.Module) else model)
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) != 1:
        raise CheckpointError(f"the model mixes dtypes {sorted(map(str, dtypes))}; ChatGLM3 has one")
    dtype = dtypes.pop()
    chatglm = chatglm_config(glm_config, dtype=dtype, name_or_path=name_or_path)
    expected = glm_shapes(chatglm)
    for name, tensor in state.items():
        if name not in expected:
            raise CheckpointError(f"{name}: not a tensor of transformers' glm that ChatGLM3 has")
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{name}: shape {list(tensor.shape)}, the config implies {list(expected[name])}"
            )
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{missing[0]}: missing from the model")

    out: dict[str, torch.Tensor] = {_TOP[n]: state[n].contiguous() for n in _TOP}
    out[INV_FREQ] = _inv_freq(chatglm["kv_channels"], dtype)
    for n in range(chatglm["num_layers"]):
        glm, thudm = f"model.layers.{n}.", f"transformer.encoder.layers.{n}."
        out |= {thudm + b: state[glm + g].contiguous() for g, b in _BACK.items()}
        for kind in ("weight", "bias") if chatglm["add_qkv_bias"] else ("weight",):
            parts = [state[f"{glm}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{thudm}self_attention.query_key_value.{kind}"] = torch.cat(parts, dim=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(_unshared(out), out_dir / "model.safetensors", metadata={"format": "pt"})
    (out_dir / CONFIG).write_text(json.dumps(chatglm, indent=2) + "\n")


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # a model with tied embeddings has one storage for embed_tokens and lm_head; safetensors wants two
    seen: set[int] = set()
    result = {}
    for name, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        result[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return result


def _inv_freq(kv_channels: int, dtype: torch.dtype) -> torch.Tensor:
    # THUDM: RotaryEmbedding(kv_channels // 2) registers this buffer in the model's dtype (and never
    # reads its values: the rotary table is recomputed from the base each forward)
    dim = kv_channels // 2
    return 1.0 / (10000 ** (torch.arange(0, dim, 2).to(dtype=dtype) / dim))


def chatglm_config(glm: Mapping[str, Any], *, dtype: torch.dtype, name_or_path: str) -> dict[str, Any]:
    """THUDM's config.json for a GLM config (the inverse of `glm_config`), or CheckpointError."""
    rope = dict(glm.get("rope_parameters") or {})
    theta = float(rope.get("rope_theta", glm.get("rope_theta", 10000.0)))
    for key, value, supported in (
        ("rope_parameters.rope_type", rope.get("rope_type", "default"), "default"),
        ("rope_parameters.partial_rotary_factor", rope.get("partial_rotary_factor", 0.5), 0.5),
        ("hidden_act", glm.get("hidden_act", "silu"), "silu"),
        ("attention_dropout", glm.get("attention_dropout", 0.0), 0.0),
    ):
        if value != supported:
            raise CheckpointError(f"{CONFIG}: {key} is {value!r}; ChatGLM3 has only {supported!r}")
    heads = glm["num_attention_heads"]
    ratio = theta / 10000.0
    chatglm: dict[str, Any] = {
        "_name_or_path": name_or_path,
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": dict(_AUTO_MAP),
        "add_bias_linear": False,
        "add_qkv_bias": bool(glm.get("attention_bias", True)),
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": glm["intermediate_size"],
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": glm["hidden_size"],
        "kv_channels": glm.get("head_dim") or glm["hidden_size"] // heads,
        "layernorm_epsilon": glm["rms_norm_eps"],
        "multi_query_attention": True,  # with as many groups as heads when the model has no GQA
        "multi_query_group_num": glm.get("num_key_value_heads") or heads,
        "num_attention_heads": heads,
        "num_layers": glm["num_hidden_layers"],
        "original_rope": True,
        "padded_vocab_size": glm["vocab_size"],
        "post_layer_norm": True,
        "rmsnorm": True,
        "seq_length": glm["max_position_embeddings"],
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": "4.30.2",  # what THUDM's files say; their code needs 4.3x
        "tie_word_embeddings": False,
        "eos_token_id": glm.get("eos_token_id", 2),
        "pad_token_id": glm.get("pad_token_id", 0),
    }
    if ratio != 1:  # THUDM writes whole numbers (50, 500)
        chatglm["rope_ratio"] = int(ratio) if ratio.is_integer() else ratio
    return chatglm
