"""A LoRA trained on the imported model, exported to ChatGLM3's layout, does the same on THUDM's own model.

Each case builds a PEFT LoRA on the imported GlmForCausalLM with random (non-zero) A and B, saves it
with PEFT, exports it, loads the export onto THUDM's ChatGLMForConditionalGeneration with PEFT, and
compares logits on a left-padded batch (fp32; measured max |diff| 0.0 with a shared lora_A, up to
3e-6 with independent ones, whose fused product sums in another order; bound 1e-4).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import GlmForCausalLM

from thudm_model import copy_checkpoint, left_padded, load_chatglm_model, randomize_norms_and_biases
from tunelab.recipes.glm.adapters import export_adapter
from tunelab.recipes.glm.errors import CheckpointError
from tunelab.recipes.glm.weights import convert_weights

QKV = ["q_proj", "k_proj", "v_proj"]
ALL = [*QKV, "o_proj", "gate_up_proj", "down_proj"]
FUSED = "base_model.model.transformer.encoder.layers.0.self_attention.query_key_value"


@pytest.fixture(scope="module")
def checkpoint(chatglm3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture with random norm weights and q/k/v biases (see `randomize_norms_and_biases`)."""
    return randomize_norms_and_biases(
        copy_checkpoint(chatglm3_dir, tmp_path_factory.mktemp("src") / "chatglm3")
    )


@pytest.fixture(scope="module")
def imported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("imported") / "model"
    convert_weights(checkpoint, dst, stop_token_ids=[2])
    return dst


def _trained_lora(imported: Path, targets: list[str], *, shared_a: bool, rslora: bool = False) -> Any:
    """A PEFT LoRA (r 4, alpha 8) on the imported model with random weights, as if trained."""
    glm = GlmForCausalLM.from_pretrained(imported, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_rslora=rslora, task_type="CAUSAL_LM")
    model: Any = get_peft_model(glm, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    if shared_a:  # one lora_A per layer for q, k and v, tied as tunelab's recipe ties it
        for layer in model.base_model.model.model.layers:
            shared = layer.self_attn.q_proj.lora_A["default"].weight
            for module in (layer.self_attn.k_proj, layer.self_attn.v_proj):
                if hasattr(module, "lora_A"):
                    module.lora_A["default"].weight = shared
    return model.eval()


@pytest.mark.parametrize(
    ("targets", "shared_a", "rslora", "fused_rank", "config_changes"),
    [
        (ALL, True, False, 4, {}),  # the recipe's adapter: ChatGLM3's own rank and parameter count
        (
            ALL,
            False,
            False,
            12,
            {"rank_pattern": {"query_key_value": 12}, "alpha_pattern": {"query_key_value": 24}},
        ),
        (
            ALL,
            False,
            True,
            12,
            {"rank_pattern": {"query_key_value": 12}, "alpha_pattern": {"query_key_value": 8 * 3**0.5}},
        ),
        (QKV, False, False, 12, {"r": 12, "lora_alpha": 24}),
        (["q_proj", "v_proj"], False, False, 8, {"r": 8, "lora_alpha": 16}),
        (["q_proj", "v_proj", "down_proj"], True, False, 4, {}),
    ],
    ids=["shared-A", "independent-A", "independent-A-rslora", "qkv-only", "q-v", "q-v-shared-down"],
)
@torch.no_grad()
def test_exported_adapter_gives_the_same_logits_on_thudm_model(
    checkpoint: Path,
    imported: Path,
    tmp_path: Path,
    targets: list[str],
    shared_a: bool,
    rslora: bool,
    fused_rank: int,
    config_changes: dict[str, Any],
) -> None:
    glm = _trained_lora(imported, targets, shared_a=shared_a, rslora=rslora)
    glm.save_pretrained(tmp_path / "adapter")
    export_adapter(tmp_path / "adapter", tmp_path / "exported")

    exported = load_file(tmp_path / "exported" / "adapter_model.safetensors")
    assert exported[f"{FUSED}.lora_A.weight"].shape == (fused_rank, 64)
    assert exported[f"{FUSED}.lora_B.weight"].shape == (64 + 32 + 32, fused_rank)
    config = json.loads((tmp_path / "exported" / "adapter_config.json").read_text())
    original = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    mapped = {"q_proj": "query_key_value", "k_proj": "query_key_value", "v_proj": "query_key_value"}
    mapped |= {"o_proj": "dense", "gate_up_proj": "dense_h_to_4h", "down_proj": "dense_4h_to_h"}
    assert config["target_modules"] == sorted({mapped[t] for t in targets})
    assert {k: v for k, v in config.items() if original.get(k) != v} == {
        "target_modules": config["target_modules"],
        "base_model_name_or_path": None,
        **config_changes,
    }

    thudm = PeftModel.from_pretrained(load_chatglm_model(checkpoint), tmp_path / "exported").eval()
    generator = torch.Generator().manual_seed(1)
    batch = left_padded([torch.randint(3, 1209, (n,), generator=generator).tolist() for n in (9, 21, 14)])
    expected = thudm(**batch, use_cache=False).logits
    actual = glm(**batch).logits
    real = batch["attention_mask"].bool()
    assert (actual - expected)[real].abs().max().item() <= 1e-4
    # the adapter matters: without it THUDM's model is far off
    with thudm.disable_adapter():
        plain = thudm(**batch, use_cache=False).logits
    assert (plain - expected)[real].abs().max().item() > 1e-2


@pytest.mark.parametrize(
    ("targets", "changes", "named"),
    [
        ([*QKV, "lm_head"], {}, "lm_head"),
        (["q_proj"], {}, "q_proj"),
        (QKV, {"use_dora": True}, "use_dora"),
        (QKV, {"bias": "lora_only"}, "bias"),
        (QKV, {"modules_to_save": ["embed_tokens"]}, "modules_to_save"),
    ],
    ids=["lm_head", "q-only", "dora", "bias", "modules_to_save"],
)
def test_adapters_it_cannot_map_are_refused(
    imported: Path, tmp_path: Path, targets: list[str], changes: dict[str, Any], named: str
) -> None:
    _trained_lora(imported, targets, shared_a=False).save_pretrained(tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))
    with pytest.raises(CheckpointError) as error:
        export_adapter(tmp_path / "adapter", tmp_path / "exported")
    assert named in str(error.value)
