"""lora.yaml parsing: ChatGLM3's file unchanged, overrides, and errors that say what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.recipes.lora.config import load_config, parse_config
from tunelab.recipes.lora.errors import ConfigError

MINIMAL = """\
data_config:
  train_file: train.json
max_input_length: 8
max_output_length: 8
training_args:
  max_steps: 3
"""


def test_chatglm3_lora_yaml_is_accepted_unchanged(lora_yaml: Path) -> None:
    body = lora_yaml.read_text().split("\ndata_config:", 1)[1]
    assert "evaluation_strategy: steps" in body and "#deepspeed: ds_zero_2.json" in body
    cfg = load_config(lora_yaml)
    t = cfg.training_args
    assert (t.max_steps, t.per_device_train_batch_size, t.save_steps, t.eval_steps) == (3000, 4, 500, 500)
    assert t.learning_rate == pytest.approx(5e-5)  # PyYAML reads `5e-5` as a string
    assert (
        t.eval_strategy == "steps"
        and t.predict_with_generate
        and t.generation_config == {"max_new_tokens": 512}
    )
    assert (cfg.peft_config.r, cfg.peft_config.lora_alpha, cfg.peft_config.lora_dropout) == (8, 32, 0.1)
    assert cfg.max_length == 256 + 512 + 1
    assert any("evaluation_strategy" in w and "eval_strategy" in w for w in cfg.warnings)
    assert any("dataloader_num_workers" in n for n in cfg.notes)


def test_set_overrides_are_typed_and_validated(lora_yaml: Path) -> None:
    cfg = load_config(
        lora_yaml,
        [
            "training_args.max_steps=20",
            "training_args.learning_rate=1e-4",
            "peft_config.target_modules=[q_proj, v_proj]",
            "tunelab.packing=true",
        ],
    )
    assert cfg.training_args.max_steps == 20 and cfg.training_args.learning_rate == pytest.approx(1e-4)
    assert cfg.peft_config.target_modules == ["q_proj", "v_proj"] and cfg.tunelab.packing is True
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(lora_yaml, ["training_args.max_steps=many"])
    with pytest.raises(ConfigError, match=r"KEY\.PATH=VALUE"):
        load_config(lora_yaml, ["training_args.max_steps"])
    with pytest.raises(ConfigError, match="max_input_length is not a section"):
        load_config(lora_yaml, ["max_input_length.x=1"])


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [
        (MINIMAL + "  eval_stratgy: steps\n", "did you mean eval_strategy"),
        (MINIMAL + "  evalution_strategy: steps\n", "did you mean evaluation_strategy"),
        (MINIMAL.replace("max_input_length", "max_input_lenght"), "did you mean max_input_length"),
        (MINIMAL + "peft_config:\n  lora_alph: 16\n", "did you mean lora_alpha"),
        (MINIMAL + "tunelab:\n  packin: true\n", "did you mean packing"),
    ],
)
def test_unknown_keys_name_the_closest_valid_key(text: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=suggestion):
        parse_config(text, source="lora.yaml")


def test_transformers_options_not_implemented_are_warnings() -> None:
    cfg = parse_config(MINIMAL + "  optim: adamw_torch\n")
    assert any("optim" in w and "ignored" in w for w in cfg.warnings)


def test_invalid_yaml_reports_line_and_column() -> None:
    with pytest.raises(ConfigError, match=r"^lora\.yaml:3:1: invalid YAML"):
        parse_config("data_config:\n  train_file: train.json\n\tmax_input_length: 8\n", source="lora.yaml")
    with pytest.raises(ConfigError, match=r"lora\.yaml:2:4: invalid YAML: expected .,. or .\]."):
        parse_config("a: [1, 2\n  b: {\n", source="lora.yaml")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  deepspeed: ds_zero_2.json\n", "does not use DeepSpeed"),
        ("  fp16: true\n", "fp16 is not supported"),
        ("  save_strategy: epoch\n", "use steps or no"),
        ("  lr_scheduler_type: wobbly\n", "use one of"),
        ("peft_config:\n  peft_type: PREFIX_TUNING\n", "LoRA adapters only"),
        ("peft_config:\n  use_dora: true\n", "vLLM cannot serve DoRA"),
        ("peft_config:\n  modules_to_save: [lm_head]\n", "modules_to_save"),
        ("tunelab:\n  packing: true\n  pack_length: 4\n", "shorter than one sample"),
    ],
)
def test_settings_tunelab_cannot_honour_are_errors(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(MINIMAL + extra)


def test_missing_sections_and_empty_files() -> None:
    with pytest.raises(ConfigError, match="missing data_config"):
        parse_config("max_input_length: 1\nmax_output_length: 1\n")
    with pytest.raises(ConfigError, match="empty"):
        parse_config("# nothing\n")
    with pytest.raises(ConfigError, match="missing train_file"):
        parse_config(MINIMAL.replace("train_file: train.json", "val_file: dev.json"))


def test_an_override_of_a_renamed_key_replaces_the_old_name(lora_yaml: Path) -> None:
    cfg = load_config(lora_yaml, ["training_args.eval_strategy=no"])
    assert cfg.training_args.eval_strategy == "no"
    with pytest.raises(ConfigError, match="both evaluation_strategy and eval_strategy"):
        parse_config(MINIMAL + "  evaluation_strategy: steps\n  eval_strategy: steps\n")
