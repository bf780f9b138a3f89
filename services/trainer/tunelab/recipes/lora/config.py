"""Read ChatGLM3's `configs/lora.yaml` (unchanged) into typed settings, and say clearly what is wrong.

The file has five sections, as in `finetune_hf.py`: `data_config`, `max_input_length`,
`max_output_length`, `training_args` (names and meanings of `transformers.Seq2SeqTrainingArguments`)
and `peft_config` (names of `peft.LoraConfig`). tunelab's own options live in an optional sixth
section, `tunelab:`. Unknown keys are errors that name the closest valid key; keys that are valid
transformers options this recipe does not implement are warnings. `--set a.b=value` overrides apply
to the raw YAML before validation, so they are checked the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.recipes.lora.errors import ConfigError
from tunelab.recipes.lora.schema import build_section, coerce, unknown_key

STRATEGIES = ("steps", "no")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
LOG_LEVELS = ("passive", "debug", "info", "warning", "error", "critical")
PROFILES = ("auto", "fast", "low_memory", "standard")
PACKING_MODES = ("auto", "varlen", "position_ids", "mask")
CHAT_TEMPLATES = ("auto", "fallback", "chatglm3")


@dataclass
class DataConfig:
    train_file: str
    val_file: str | None = None
    test_file: str | None = None
    num_proc: int | None = None  # accepted; tokenization is batched in one process


@dataclass
class TrainingArgs:
    """The subset of `transformers.TrainingArguments` this recipe implements, with HF's defaults."""

    output_dir: str = "./output"
    max_steps: int = -1
    num_train_epochs: float = 3.0
    learning_rate: float = 5e-5
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int | None = None  # None: the train batch size (as finetune_hf.py)
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    seed: int = 42
    save_strategy: str = "steps"
    save_steps: float = 500  # < 1 means a fraction of the total steps, as in transformers
    save_total_limit: int | None = None
    logging_strategy: str = "steps"
    logging_steps: float = 500
    eval_strategy: str = "no"
    eval_steps: float | None = None  # None: logging_steps
    do_eval: bool | None = None
    predict_with_generate: bool = False
    generation_config: dict[str, Any] | None = None
    use_cpu: bool = False
    bf16: bool | None = None  # None: bf16 where the GPU supports it, else fp32
    fp16: bool = False
    gradient_checkpointing: bool | None = None  # None: tunelab.profile decides (low_memory: on)
    log_level: str = "passive"


@dataclass
class PeftSettings:
    peft_type: str = "LORA"
    task_type: str = "CAUSAL_LM"
    r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None  # None: PEFT's default for the model type
    bias: str = "none"
    use_rslora: bool = False
    use_dora: bool = False
    modules_to_save: list[str] | None = None
    inference_mode: bool = False


@dataclass
class TunelabOptions:
    """Options ChatGLM3's recipe does not have. All optional; `profile` sets the speed defaults."""

    profile: str = "auto"  # auto | fast | low_memory | standard (see speed.py)
    packing: bool | None = None  # pack samples into rows (no attention across samples); None: profile
    pack_length: int | None = None  # tokens per packed row; None: the profile's (standard: max_length)
    packing_mode: str = "auto"  # auto | varlen | position_ids | mask: how packed samples are kept apart
    compile: bool | None = None  # torch.compile each decoder layer; None: the profile's (on a GPU: on)
    trust_remote_code: bool = False  # run Python code shipped in MODEL_DIR (ChatGLM3: import it instead)
    attn_implementation: str | None = None  # e.g. sdpa, eager, flash_attention_2; None: the model's
    chat_template: str = "auto"  # auto: ChatGLM3's format for its tokenizer, else the tokenizer's template
    # if it has one, else ours; fallback: ours; chatglm3: ChatGLM3's (see chatglm3.py)
    eval_max_samples: int = 50  # dev rows that get generation-based ROUGE/BLEU
    eval_max_new_tokens: int | None = None  # caps generation_config.max_new_tokens during eval
    merge_adapter: bool = False  # also write OUTPUT/merged: the base model with LoRA folded in
    base_model_name: str | None = None  # adapter_config's base_model_name_or_path; None: dir name


@dataclass
class RecipeConfig:
    data_config: DataConfig
    max_input_length: int
    max_output_length: int
    training_args: TrainingArgs
    peft_config: PeftSettings
    tunelab: TunelabOptions = field(default_factory=TunelabOptions)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def max_length(self) -> int:
        """Longest tokenized sample, as `finetune_hf.py` computes it."""
        return self.max_input_length + self.max_output_length + 1

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("warnings")
        data.pop("notes")
        return data


# Keys of training_args that are accepted with a note: they have no effect here, and say why.
_NO_EFFECT = {
    "dataloader_num_workers": "samples are tokenized once up front, so batches need no worker processes",
    "remove_unused_columns": "the recipe builds its own batches",
    "report_to": "metrics are JSON lines on stdout or in --metrics-file",
    "debug": "a NaN or inf loss always stops the run with that reason",
    "logging_dir": "metrics are JSON lines on stdout or in --metrics-file",
}
_REJECTED = {
    "deepspeed": "tunelab's LoRA recipe does not use DeepSpeed (LoRA fits one GPU); remove it",
    "resume_from_checkpoint": "resume with the recipe's 4th argument instead: yes, no or a checkpoint step",
}
_ALIASES = {"evaluation_strategy": "eval_strategy"}  # renamed in transformers 4.46


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> RecipeConfig:
    """Parse, override and validate a lora.yaml-style file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    return parse_config(text, overrides, source=str(path))


def parse_config(text: str, overrides: typing.Sequence[str] = (), source: str = "<config>") -> RecipeConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None
    if raw is None:
        raise ConfigError(f"{source}: the config is empty; start from configs/lora.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        _apply_override(raw, item)
    return _build(raw, source)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key_path, sep, value_text = item.partition("=")
    if not sep or not key_path.strip():
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. training_args.max_steps=20")
    keys = key_path.strip().split(".")
    node = raw
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(keys[: i + 1])} is not a section")
        node = child
    try:
        node[keys[-1]] = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        node[keys[-1]] = value_text
    for old, new in _ALIASES.items():  # an override of either name replaces the other one
        if keys[-1] in (old, new):
            node.pop(new if keys[-1] == old else old, None)


def _build(raw: dict[str, Any], source: str) -> RecipeConfig:
    warnings: list[str] = []
    notes: list[str] = []
    top = {"data_config", "max_input_length", "max_output_length", "training_args", "peft_config", "tunelab"}
    for key in raw:
        if key not in top:
            raise ConfigError(unknown_key(source, key, top))
    for key in ("data_config", "max_input_length", "max_output_length"):
        if key not in raw:
            raise ConfigError(f"{source}: missing {key} (see configs/lora.yaml)")
    data = build_section(DataConfig, raw["data_config"], f"{source}: data_config")
    training = _training_args(raw.get("training_args"), source, warnings, notes)
    peft = build_section(
        PeftSettings, raw.get("peft_config") or {"peft_type": "LORA"}, f"{source}: peft_config"
    )
    options = build_section(TunelabOptions, raw.get("tunelab"), f"{source}: tunelab")
    cfg = RecipeConfig(
        data_config=data,
        max_input_length=coerce(raw["max_input_length"], int, f"{source}: max_input_length"),
        max_output_length=coerce(raw["max_output_length"], int, f"{source}: max_output_length"),
        training_args=training,
        peft_config=peft,
        tunelab=options,
        warnings=warnings,
        notes=notes,
    )
    _validate(cfg, source)
    return cfg


def _training_args(raw: Any, source: str, warnings: list[str], notes: list[str]) -> TrainingArgs:
    where = f"{source}: training_args"
    raw = dict(raw or {})
    for old, new in _ALIASES.items():
        if old in raw:
            if new in raw:
                raise ConfigError(f"{where}: both {old} and {new} are set; keep only {new}")
            warnings.append(
                f"training_args.{old} is the old name of {new} (transformers 4.46); using it as {new}"
            )
            raw[new] = raw.pop(old)
    known = {f.name for f in dataclasses.fields(TrainingArgs)}
    kept: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _REJECTED and value not in (None, False, ""):
            raise ConfigError(f"{where}.{key}: {_REJECTED[key]}")
        if key in _REJECTED or key in _NO_EFFECT:
            notes.append(f"training_args.{key} has no effect here: {_NO_EFFECT.get(key, 'unset')}")
        elif key in known:
            kept[key] = value
        elif key in _hf_training_fields():
            warnings.append(
                f"training_args.{key} is a transformers option this recipe does not implement; ignored"
            )
        else:
            raise ConfigError(unknown_key(where, key, known | set(_ALIASES) | set(_NO_EFFECT)))
    return build_section(TrainingArgs, kept, where)


@functools.cache
def _hf_training_fields() -> frozenset[str]:
    """Names transformers accepts in TrainingArguments (empty when transformers is not importable)."""
    try:
        from transformers import Seq2SeqTrainingArguments
    except ImportError:
        return frozenset()
    return frozenset(f.name for f in dataclasses.fields(Seq2SeqTrainingArguments))


def _validate(cfg: RecipeConfig, source: str) -> None:
    t, p, o = cfg.training_args, cfg.peft_config, cfg.tunelab

    def bad(where: str, message: str) -> ConfigError:
        return ConfigError(f"{source}: {where}: {message}")

    for name in ("max_input_length", "max_output_length"):
        if getattr(cfg, name) < 1:
            raise bad(name, "must be at least 1")
    if t.max_steps <= 0 and t.num_train_epochs <= 0:
        raise bad("training_args", "set max_steps (> 0) or num_train_epochs (> 0)")
    if t.learning_rate <= 0:
        raise bad("training_args.learning_rate", f"must be > 0, got {t.learning_rate}")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(t, name) < 1:
            raise bad(f"training_args.{name}", "must be at least 1")
    if t.per_device_eval_batch_size is not None and t.per_device_eval_batch_size < 1:
        raise bad("training_args.per_device_eval_batch_size", "must be at least 1")
    for name in ("save_strategy", "logging_strategy", "eval_strategy"):
        if getattr(t, name) not in STRATEGIES:
            raise bad(f"training_args.{name}", f"{getattr(t, name)!r} is not supported; use steps or no")
    for name in ("save_steps", "logging_steps", "eval_steps"):
        value = getattr(t, name)
        if value is not None and (value <= 0 or (value > 1 and not float(value).is_integer())):
            raise bad(f"training_args.{name}", "must be a whole number of steps, or a fraction below 1")
    if t.save_total_limit is not None and t.save_total_limit < 1:
        raise bad("training_args.save_total_limit", "must be at least 1 (or leave it out to keep all)")
    if t.lr_scheduler_type not in SCHEDULERS:
        raise bad("training_args.lr_scheduler_type", f"use one of {', '.join(SCHEDULERS)}")
    if t.log_level not in LOG_LEVELS:
        raise bad("training_args.log_level", f"use one of {', '.join(LOG_LEVELS)}")
    if t.fp16:
        raise bad("training_args.fp16", "fp16 is not supported; bf16 is used where the GPU has it, else fp32")
    if t.bf16 and t.use_cpu:
        raise bad("training_args.bf16", "bf16 training needs a GPU with bf16; remove bf16 or use_cpu")
    if p.peft_type.upper() != "LORA":
        raise bad(
            "peft_config.peft_type", f"{p.peft_type!r}: tunelab's recipe trains LoRA adapters only (LORA)"
        )
    if p.task_type.upper() != "CAUSAL_LM":
        raise bad("peft_config.task_type", f"{p.task_type!r}: only CAUSAL_LM is supported")
    if p.r < 1 or p.lora_alpha <= 0 or not 0 <= p.lora_dropout < 1:
        raise bad("peft_config", "need r >= 1, lora_alpha > 0 and 0 <= lora_dropout < 1")
    if p.use_dora:
        raise bad("peft_config.use_dora", "vLLM cannot serve DoRA adapters; remove use_dora")
    if p.modules_to_save:
        raise bad("peft_config.modules_to_save", "vLLM rejects adapters with modules_to_save; remove it")
    if p.bias != "none":
        raise bad("peft_config.bias", "vLLM serves LoRA adapters without bias only; use bias: none")
    if p.r > 16:
        cfg.warnings.append(
            f"peft_config.r is {p.r}: serve it with vLLM --max-lora-rank >= {p.r} (default 16)"
        )
    if o.profile not in PROFILES:
        raise bad("tunelab.profile", f"{o.profile!r}: use one of {', '.join(PROFILES)}")
    if o.packing_mode not in PACKING_MODES:
        raise bad("tunelab.packing_mode", f"{o.packing_mode!r}: use one of {', '.join(PACKING_MODES)}")
    if o.chat_template not in CHAT_TEMPLATES:
        raise bad("tunelab.chat_template", "use auto (the tokenizer's format), fallback or chatglm3")
    if o.pack_length is not None and o.pack_length < cfg.max_length:
        raise bad(
            "tunelab.pack_length",
            f"{o.pack_length} is shorter than one sample can be ({cfg.max_length} = max_input_length + "
            "max_output_length + 1); raise it",
        )
    if o.eval_max_samples < 0:
        raise bad("tunelab.eval_max_samples", "must be 0 or more")
