"""Loading: check MODEL_DIR is a local causal LM, pick device and dtype, load tokenizer and model, add LoRA.

Nothing is downloaded: every load passes `local_files_only=True` and `__main__` sets HF_HUB_OFFLINE.
Whatever a load raises (remote code can raise anything) becomes a ModelError naming what failed, so a
job ends with a reason, not a traceback; ChatGLM3 in THUDM's layout is refused with how to import it.
LoRA targets: targets.py.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from tunelab.recipes.lora.config import PeftSettings, TrainingArgs
from tunelab.recipes.lora.errors import ConfigError, ModelError
from tunelab.recipes.lora.targets import resolve_targets, share_qkv_lora_A

log = logging.getLogger(__name__)


def causal_lm_config(model_dir: Path, trust_remote_code: bool) -> Any:
    """The model's config, if MODEL_DIR holds a causal LM that loads without downloading anything."""
    if not model_dir.is_dir():
        raise ModelError(
            f"MODEL_DIR {model_dir} is not a local directory; tunelab never downloads models: "
            "mount the model as a dataset and pass its path"
        )
    raw = _raw_config(model_dir)
    if thudm_chatglm(raw) and not trust_remote_code:
        raise ModelError(import_hint(model_dir))
    remote = "AutoModelForCausalLM" in raw.get("auto_map", {})
    if remote and not trust_remote_code:
        raise ModelError(
            f"{model_dir} ships its own model code (auto_map in config.json); if you trust it, add "
            "--set tunelab.trust_remote_code=true"
        )
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code, local_files_only=True
        )
    except Exception as e:  # noqa: BLE001 - remote config code can raise anything
        raise ModelError(cannot("read the config of", model_dir, e)) from None
    model_type = getattr(config, "model_type", "?")
    causal = remote or model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if getattr(config, "is_encoder_decoder", False) or not causal:
        architectures = ", ".join(raw.get("architectures") or []) or "unknown architecture"
        raise ModelError(
            f"{model_dir} is a {model_type!r} model ({architectures}), not a causal language model: "
            "AutoModelForCausalLM can't load it. Use a decoder-only model such as Llama, Qwen2 or ChatGLM3"
        )
    return config


def thudm_chatglm(raw: dict[str, Any]) -> bool:
    """ChatGLM2/3 as THUDM ships it: model_type chatglm with its own code (auto_map)."""
    return raw.get("model_type") == "chatglm" and bool(raw.get("auto_map"))


def import_hint(model_dir: Path) -> str:
    return (
        f"{model_dir} is ChatGLM3 in THUDM's original layout, whose model code needs transformers 4.3x; "
        "import it once with `tunelab model import NAME --from DATASET` (or `python -m tunelab.recipes.glm "
        "import SRC DST`) and train the imported version"
    )


def cannot(what: str, model_dir: Path, error: Exception) -> str:
    """One line saying what failed to load and why; for THUDM's layout, how to import it instead."""
    detail = (str(error).strip().splitlines() or [""])[0]
    message = f"cannot {what} {model_dir} ({type(error).__name__}: {detail})"
    if model_dir.is_dir() and thudm_chatglm(_raw_config(model_dir)):
        return f"{message}: {import_hint(model_dir)}"
    return message


def _raw_config(model_dir: Path) -> dict[str, Any]:
    try:
        raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{model_dir} is not a Hugging Face model directory (no config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {model_dir}/config.json: {e}") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{model_dir}/config.json is not a JSON object")
    return raw


def device_and_dtype(args: TrainingArgs) -> tuple[torch.device, torch.dtype]:
    """A GPU with bf16 where there is one (unless use_cpu), else the CPU in fp32."""
    if args.use_cpu or not torch.cuda.is_available():
        if not args.use_cpu:
            log.warning("no GPU found: training on CPU in fp32")
        if args.bf16:
            raise ConfigError(
                "training_args.bf16 is true but there is no GPU; remove it to train in fp32 on CPU"
            )
        return torch.device("cpu"), torch.float32
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    supported = torch.cuda.is_bf16_supported()
    if args.bf16 and not supported:
        raise ConfigError(f"training_args.bf16 is true but {torch.cuda.get_device_name(device)} has no bf16")
    return device, torch.bfloat16 if args.bf16 is not False and supported else torch.float32


def load_tokenizer(model_dir: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code, local_files_only=True
        )
        tokenizer(["\n"], add_special_tokens=False)  # remote code may load, then fail on first use
        tokenizer.get_vocab()
    except Exception as e:  # noqa: BLE001 - remote tokenizer code can raise anything
        raise ModelError(cannot("load the tokenizer of", model_dir, e)) from None
    return tokenizer


def pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def load_model(
    model_dir: Path,
    config: Any,
    device: torch.device,
    dtype: torch.dtype,
    *,
    trust_remote_code: bool,
    attn_implementation: str | None,
) -> Any:
    """The base model on `device` in `dtype`, without KV cache."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "local_files_only": True,
        "trust_remote_code": trust_remote_code,
    }
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, config=config, **kwargs)
    except Exception as e:  # noqa: BLE001 - remote model code can raise anything
        raise ModelError(cannot("load the causal LM in", model_dir, e)) from None
    model.config.use_cache = False
    model.to(device)
    return model


def enable_checkpointing(model: Any) -> None:
    """Recompute each decoder layer's activations in backward instead of keeping them (less memory)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ModelError(f"{type(base).__name__} does not support gradient checkpointing; turn it off")
    enable = getattr(base, "activation_checkpointing_enable", None)  # the name since transformers 5.x
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def apply_lora(model: Any, settings: PeftSettings) -> Any:
    """Wrap `model` with LoRA adapters on the configured (or PEFT's default) linear modules."""
    from peft import LoraConfig, get_peft_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULT_TARGETS

    model_type = getattr(model.config, "model_type", "")
    targets = resolve_targets(model_type, settings.target_modules, DEFAULT_TARGETS.get(model_type) or [])
    linear = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    )
    if not targets.modules:
        raise ModelError(
            f"PEFT has no default LoRA target modules for model type {model_type!r}; set "
            f"peft_config.target_modules to some of: {', '.join(linear)}"
        )
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets.modules,
        bias="none",
        use_rslora=settings.use_rslora,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft calls deprecated transformers names
            model = get_peft_model(model, lora)
    except ValueError as e:
        raise ModelError(f"{e}; linear modules of this model: {', '.join(linear)}") from None
    if targets.shared_qkv and not share_qkv_lora_A(model):
        raise ModelError(f"{model_type!r} has no attention block with q_proj, k_proj and v_proj")
    if any("lora_embedding" in n for n, _ in model.named_parameters()):
        raise ModelError(
            "LoRA on embeddings can't be served by vLLM; drop embedding layers from target_modules"
        )
    return model
