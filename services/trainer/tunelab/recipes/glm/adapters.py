"""A PEFT LoRA adapter trained on an imported GLM model -> the same adapter for THUDM's ChatGLM3 layout.

For people who serve the original checkpoint elsewhere (THUDM's code, vLLM's `chatglm`): the exported
adapter is what PEFT would have saved on ChatGLMForConditionalGeneration, with the same function.

    base_model.model.model.layers.N.self_attn.{q,k,v}_proj
                         -> base_model.model.transformer.encoder.layers.N.self_attention.query_key_value
    ...self_attn.o_proj  -> ...self_attention.dense        ...mlp.gate_up_proj -> ...mlp.dense_h_to_4h
    ...mlp.down_proj     -> ...mlp.dense_4h_to_h

query_key_value's rows are [q | k | v], so q/k/v adapters fuse exactly:
- one shared lora_A (tunelab's recipe ties it; PEFT saves each module's copy, equal): A stays, B is
  [B_q; B_k; B_v] -- rank r, as ChatGLM3's own recipe trains it;
- independent lora_A: A = [A_q; A_k; A_v] (rank 3r), B block-diagonal, and lora_alpha scaled so the
  scaling alpha/r (alpha/sqrt(r) with rsLoRA) is unchanged: globally when query_key_value is the only
  target, else through rank_pattern/alpha_pattern for query_key_value.
A module left out (q and v only, say) contributes zero rows of B. Adapters this cannot express (DoRA,
bias, modules_to_save, patterns, embeddings, ...) are refused with the module or key named.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunelab.recipes.glm.errors import CheckpointError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(\w+\.\w+)\.lora_([AB])\.weight$")
_MODULES = {  # GLM module (per layer) -> ChatGLM3 module
    "self_attn.o_proj": "self_attention.dense",
    "mlp.gate_up_proj": "mlp.dense_h_to_4h",
    "mlp.down_proj": "mlp.dense_4h_to_h",
}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_FUSED = "self_attention.query_key_value"
_UNSUPPORTED = (  # adapter_config.json keys that must be empty/false: variants with no fused equivalent here
    "modules_to_save", "exclude_modules", "fan_in_fan_out", "use_dora", "lora_bias", "layer_replication",
    "target_parameters", "trainable_token_indices", "alora_invocation_tokens", "use_bdlora", "use_qalora",
    "rank_pattern", "alpha_pattern", "megatron_config", "arrow_config", "velora_config", "monteclora_config",
    "kasa_config",
)  # fmt: skip


def export_adapter(adapter_dir: Path, out_dir: Path, *, base_model_name_or_path: str | None = None) -> None:
    """Write `adapter_dir`'s adapter into `out_dir` in ChatGLM3's layout (config + safetensors)."""
    config = _read_config(adapter_dir)
    weights = _read_weights(adapter_dir)
    layers: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    for key, tensor in weights.items():
        match = _KEY.match(key)
        if not match or (match[2] not in _MODULES and match[2] not in _QKV):
            raise CheckpointError(
                f"{ADAPTER_WEIGHTS}: {key} is a LoRA on a module ChatGLM3's layout cannot take (only q/k/v, "
                "o_proj, gate_up_proj and down_proj map); train without it to export"
            )
        layers.setdefault(int(match[1]), {}).setdefault(match[2], {})[match[3]] = tensor

    out: dict[str, torch.Tensor] = {}
    fused_ranks: set[int] = set()
    targets: set[str] = set()
    for n, modules in sorted(layers.items()):
        prefix = f"base_model.model.transformer.encoder.layers.{n}."
        for module, pair in modules.items():
            if len(pair) != 2:
                missing = "B" if "A" in pair else "A"
                raise CheckpointError(
                    f"{ADAPTER_WEIGHTS}: layer {n} {module} has no lora_{missing}; save it again"
                )
            if module in _MODULES:
                out[f"{prefix}{_MODULES[module]}.lora_A.weight"] = pair["A"]
                out[f"{prefix}{_MODULES[module]}.lora_B.weight"] = pair["B"]
                targets.add(_MODULES[module].rpartition(".")[2])
        if any(m in modules for m in _QKV):
            a, b = _fuse_qkv({m: modules[m] for m in _QKV if m in modules}, n)
            out[f"{prefix}{_FUSED}.lora_A.weight"], out[f"{prefix}{_FUSED}.lora_B.weight"] = a, b
            fused_ranks.add(a.shape[0])
            targets.add("query_key_value")
    if len(fused_ranks) > 1:
        raise CheckpointError(
            f"{ADAPTER_WEIGHTS}: q/k/v adapters fuse to different ranks per layer {fused_ranks}"
        )
    config = _exported_config(config, sorted(targets), fused_ranks.pop() if fused_ranks else None)
    config["base_model_name_or_path"] = base_model_name_or_path
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(out, out_dir / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def _fuse_qkv(parts: dict[str, dict[str, torch.Tensor]], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = (parts.get(m) for m in _QKV)
    kv = k if k is not None else v
    if q is None or kv is None:
        raise CheckpointError(
            f"{ADAPTER_WEIGHTS}: layer {layer} has LoRA on {', '.join(parts)} only; exporting to "
            "query_key_value needs q_proj and k_proj or v_proj (their sizes give the fused rows)"
        )
    # (the module's A and B or None, its rows of query_key_value) for q, k, v in that order
    slots = list(zip((q, k, v), (q["B"].shape[0], kv["B"].shape[0], kv["B"].shape[0]), strict=True))
    a_list = [p["A"] for p, _ in slots if p is not None]
    r, zeros = q["B"].shape[1], q["B"].new_zeros
    if all(torch.equal(a_list[0], a) for a in a_list[1:]):  # one shared lora_A: rank r, as ChatGLM3's
        return a_list[0], torch.cat([p["B"] if p is not None else zeros(n, r) for p, n in slots])
    b = zeros(sum(n for _, n in slots), r * len(a_list))  # block-diagonal, a block per lora_A
    row = column = 0
    for p, n in slots:
        if p is not None:
            b[row : row + n, column : column + r] = p["B"]
            column += r
        row += n
    return torch.cat(a_list), b


def _exported_config(config: dict[str, Any], targets: list[str], fused_rank: int | None) -> dict[str, Any]:
    config = dict(config, target_modules=targets)
    r, alpha = config["r"], config["lora_alpha"]
    if fused_rank is None or fused_rank == r:
        return config
    # rank 3r (or 2r): keep the scaling alpha/r (rsLoRA: alpha/sqrt(r)) of the modules it came from
    factor = fused_rank / r
    fused_alpha = alpha * (math.sqrt(factor) if config.get("use_rslora") else factor)
    if targets == ["query_key_value"]:
        return config | {"r": fused_rank, "lora_alpha": fused_alpha}
    return config | {
        "rank_pattern": {"query_key_value": fused_rank},
        "alpha_pattern": {"query_key_value": fused_alpha},
    }


def _read_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read as an adapter config ({e})") from e
    if config.get("peft_type") != "LORA":
        raise CheckpointError(
            f"{ADAPTER_CONFIG}: peft_type is {config.get('peft_type')!r}; only LORA exports"
        )
    if config.get("bias", "none") != "none":
        raise CheckpointError(f"{ADAPTER_CONFIG}: bias is {config['bias']!r}; only 'none' exports")
    for key in _UNSUPPORTED:
        if config.get(key):
            raise CheckpointError(
                f"{ADAPTER_CONFIG}: {key} is set ({config[key]!r}); the export handles plain LoRA on q/k/v, "
                "o_proj, gate_up_proj and down_proj only"
            )
    return config


def _read_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the export reads safetensors adapters, as PEFT saves them)")
    try:
        return load_file(path)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read ({e}); it is truncated or corrupt") from e
