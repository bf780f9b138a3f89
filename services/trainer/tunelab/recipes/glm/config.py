"""ChatGLM3's config.json -> GlmForCausalLM's config.json and generation_config.json, exact or refused.

    padded_vocab_size -> vocab_size            num_layers -> num_hidden_layers
    ffn_hidden_size -> intermediate_size       kv_channels -> head_dim
    multi_query_group_num (if multi_query_attention, else the head count) -> num_key_value_heads
    layernorm_epsilon -> rms_norm_eps          seq_length -> max_position_embeddings
    10000 x rope_ratio -> rope_parameters.rope_theta (partial_rotary_factor 0.5: rotary on half of
    each head, interleaved, as original_rope does)        add_qkv_bias -> attention_bias

Everything else a ChatGLM config can say either has no effect on THUDM's code under torch >= 2
(`apply_query_key_layer_scaling`, `attention_softmax_in_fp32`: its attention is SDPA with 1/sqrt(d)),
or selects a variant the native architecture does not have (LayerNorm, biases on every Linear, the
post-LayerNorm residual, P-tuning prefixes, int4/int8 weights): those are refused with the key named,
as is any key this module does not know: an exact import cannot guess what an unknown key does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tunelab.recipes.glm.errors import CheckpointError

CONFIG = "config.json"
MODELING = "modeling_chatglm.py"

# key: (the value transformers' glm reproduces, THUDM's default when absent, what the other value means)
_FIXED: dict[str, tuple[Any, Any, str]] = {
    "rmsnorm": (True, True, "LayerNorm instead of RMSNorm"),
    "add_bias_linear": (False, False, "biases on every Linear (glm has them on q/k/v only)"),
    "apply_residual_connection_post_layernorm": (False, False, "residuals taken after the LayerNorm"),
    "post_layer_norm": (True, True, "no final LayerNorm"),
    "original_rope": (True, True, "a rotary variant other than ChatGLM3's"),
    "fp32_residual_connection": (False, False, "an fp32 residual stream under fp16 weights"),
    "quantization_bit": (0, 0, "int4/int8 quantized weights: import the unquantized checkpoint"),
    "pre_seq_len": (None, None, "a P-tuning v2 checkpoint (a prefix encoder)"),
    "prefix_projection": (False, False, "a P-tuning v2 checkpoint (a prefix projection)"),
    "hidden_dropout": (0.0, 0.0, "dropout on the residual stream, which glm does not have"),
    "attention_dropout": (0.0, 0.0, "attention dropout (THUDM's SDPA path never applies it)"),
}
_REQUIRED = (
    "num_layers",
    "padded_vocab_size",
    "hidden_size",
    "ffn_hidden_size",
    "kv_channels",
    "num_attention_heads",
    "seq_length",
    "layernorm_epsilon",
)
_MAPPED = {"multi_query_attention", "multi_query_group_num", "rope_ratio", "add_qkv_bias", "model_type"}
_MAPPED |= {"eos_token_id", "pad_token_id", "torch_dtype", "dtype", "tie_word_embeddings", "use_cache"}
_IGNORED = {  # no effect on the maths (see the module docstring)
    "_name_or_path",
    "architectures",
    "auto_map",
    "transformers_version",
    "apply_query_key_layer_scaling",
    "attention_softmax_in_fp32",
    "bias_dropout_fusion",
    "classifier_dropout",  # ChatGLMForSequenceClassification's head only
    "num_hidden_layers",  # checked equal to num_layers
    "vocab_size",  # checked equal to padded_vocab_size
}


def read_config(src: Path) -> dict[str, Any]:
    path = src / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{src}: no {CONFIG}; point at the folder a download of THUDM/chatglm3-6b made")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{CONFIG}: not valid JSON ({e}); download it again") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{CONFIG}: not a JSON object; download it again")
    return config


def glm_config(
    chatglm: dict[str, Any], *, stop_token_ids: list[int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json for GlmForCausalLM, generation_config.json) for a ChatGLM config, or CheckpointError."""
    _refuse_variants(chatglm)
    heads = _int(chatglm, "num_attention_heads")
    groups = _int(chatglm, "multi_query_group_num") if chatglm.get("multi_query_attention") else heads
    if heads % groups:
        raise CheckpointError(
            f"{CONFIG}: num_attention_heads {heads} is not a multiple of {groups} KV groups"
        )
    rope_ratio = _number(chatglm, "rope_ratio", 1)
    eos = chatglm.get("eos_token_id", 2)
    config = {
        "architectures": ["GlmForCausalLM"],
        "model_type": "glm",
        "vocab_size": _int(chatglm, "padded_vocab_size"),
        "hidden_size": _int(chatglm, "hidden_size"),
        "intermediate_size": _int(chatglm, "ffn_hidden_size"),
        "num_hidden_layers": _int(chatglm, "num_layers"),
        "num_attention_heads": heads,
        "num_key_value_heads": groups,
        "head_dim": _int(chatglm, "kv_channels"),
        "hidden_act": "silu",
        "attention_bias": bool(chatglm.get("add_qkv_bias", False)),
        "attention_dropout": 0.0,
        "max_position_embeddings": _int(chatglm, "seq_length"),
        "rms_norm_eps": float(_number(chatglm, "layernorm_epsilon", None)),
        # THUDM's RotaryEmbedding: base 10000 * rope_ratio (the 32k/GLM-4 revisions; see check_rope_code)
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0 * rope_ratio,
            "partial_rotary_factor": 0.5,
        },
        # THUDM's model has no get_output_embeddings, so transformers never tied output_layer: keep both
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": eos,
        "pad_token_id": chatglm.get("pad_token_id", 0),
        "dtype": str(chatglm.get("torch_dtype") or chatglm.get("dtype") or "float16"),
    }
    generation = {"eos_token_id": list(stop_token_ids), "pad_token_id": config["pad_token_id"]}
    return config, generation


def _refuse_variants(chatglm: dict[str, Any]) -> None:
    if chatglm.get("model_type") != "chatglm":
        raise CheckpointError(
            f"{CONFIG}: model_type is {chatglm.get('model_type')!r}, not 'chatglm'; this imports THUDM's "
            "ChatGLM3 layout (a model already in transformers' glm layout needs no import)"
        )
    for key, (supported, default, meaning) in _FIXED.items():
        value = chatglm.get(key, default)
        if value != supported or isinstance(supported, bool) is not isinstance(value, bool):
            raise CheckpointError(
                f"{CONFIG}: {key} is {json.dumps(value)}: {meaning}; transformers' glm reproduces only "
                f"{key} = {json.dumps(supported)}, so this checkpoint cannot be imported exactly"
            )
    for key in _REQUIRED:
        if key not in chatglm:
            raise CheckpointError(f"{CONFIG}: {key} is missing; download config.json again")
    for alias, key in (("num_hidden_layers", "num_layers"), ("vocab_size", "padded_vocab_size")):
        if alias in chatglm and chatglm[alias] != chatglm[key]:
            raise CheckpointError(f"{CONFIG}: {alias} {chatglm[alias]} differs from {key} {chatglm[key]}")
    unknown = sorted(set(chatglm) - set(_FIXED) - set(_REQUIRED) - _MAPPED - _IGNORED)
    if unknown:
        raise CheckpointError(
            f"{CONFIG}: unknown key {unknown[0]!r}; the import maps only keys whose effect it knows. If it "
            "does not change the model, import a copy of the folder whose config.json lacks it"
        )


def _int(chatglm: dict[str, Any], key: str) -> int:
    value = chatglm.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{CONFIG}: {key} is {value!r}, expected a positive integer")
    return value


def _number(chatglm: dict[str, Any], key: str, default: float | None) -> float:
    value = chatglm.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise CheckpointError(f"{CONFIG}: {key} is {value!r}, expected a positive number")
    return value


def chatglm_shapes(chatglm: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """THUDM's tensor names and shapes for a (supported) ChatGLM config."""
    hidden, ffn, kv = chatglm["hidden_size"], chatglm["ffn_hidden_size"], chatglm["kv_channels"]
    heads, vocab = chatglm["num_attention_heads"], chatglm["padded_vocab_size"]
    groups = chatglm["multi_query_group_num"] if chatglm.get("multi_query_attention") else heads
    qkv = (heads + 2 * groups) * kv
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.embedding.word_embeddings.weight": (vocab, hidden),
        "transformer.rotary_pos_emb.inv_freq": (kv // 4,),  # RotaryEmbedding(kv // 2): every 2nd of kv // 2
        "transformer.encoder.final_layernorm.weight": (hidden,),
        "transformer.output_layer.weight": (vocab, hidden),
    }
    for n in range(chatglm["num_layers"]):
        layer = f"transformer.encoder.layers.{n}."
        shapes |= {
            layer + "input_layernorm.weight": (hidden,),
            layer + "self_attention.query_key_value.weight": (qkv, hidden),
            layer + "self_attention.dense.weight": (hidden, heads * kv),
            layer + "post_attention_layernorm.weight": (hidden,),
            layer + "mlp.dense_h_to_4h.weight": (2 * ffn, hidden),
            layer + "mlp.dense_4h_to_h.weight": (hidden, ffn),
        }
        if chatglm.get("add_qkv_bias"):
            shapes[layer + "self_attention.query_key_value.bias"] = (qkv,)
    return shapes


_SCALES_BASE = re.compile(r"base\s*=\s*base\s*\*\s*self\.rope_ratio")  # ChatGLM3-6B-32k, GLM-4
_SCALES_POSITIONS = re.compile(r"/\s*self\.rope_ratio")  # ChatGLM2-6B-32k: position interpolation


def check_rope_code(src: Path, chatglm: dict[str, Any]) -> None:
    """rope_ratio means different things in THUDM's revisions: accept it only where it scales the base.

    ChatGLM3-6B-32k and GLM-4 multiply the rotary base by it (= rope_theta); ChatGLM2-6B-32k divides the
    positions by it (interpolation); ChatGLM3-6B's own code ignores it. config.json alone cannot tell,
    so with a rope_ratio other than 1 the checkpoint's modeling_chatglm.py decides.
    """
    if chatglm.get("rope_ratio", 1) == 1:
        return
    path = src / MODELING
    if not path.is_file():
        raise CheckpointError(
            f"{CONFIG}: rope_ratio is {chatglm['rope_ratio']}, and without the checkpoint's {MODELING} the "
            "import cannot tell what it means; keep the file that came with the download beside config.json"
        )
    code = path.read_text(errors="replace")
    if _SCALES_POSITIONS.search(code):
        raise CheckpointError(
            f"{MODELING}: divides positions by rope_ratio (ChatGLM2-6B-32k's interpolation), which "
            "transformers' glm does not reproduce exactly; import a ChatGLM3 or GLM-4 checkpoint"
        )
    if not _SCALES_BASE.search(code):
        raise CheckpointError(
            f"{MODELING}: does not use rope_ratio, which {CONFIG} sets to {chatglm['rope_ratio']}: the "
            "config and the code disagree (the code runs with base 10000); fix whichever is wrong"
        )
