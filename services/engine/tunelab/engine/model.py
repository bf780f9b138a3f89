"""The served model: a Hugging Face causal LM, its tokenizer, and LoRA adapters loaded with peft
under their names.

Prompts: chat messages are rendered with the model's chat template and tokenized without the
tokenizer's special tokens (as vLLM does for chat: a template that writes BOS or a prefix such as
ChatGLM3's ``[gMASK]sop`` sends it once); plain completions are tokenized with them. Generation
stops on any id in ``stop_ids``: the tokenizer's eos, the config's and generation_config.json's
(ChatGLM3 lists ``</s>``, ``<|user|>`` and ``<|observation|>``).

Adapters in one batch: peft's per-row ``adapter_names`` indexes each LoRA layer's input by batch
row along its first dimension, which holds only for batch-first models (ChatGLM3's own code is
sequence-first: ``[seq, batch, hidden]``). Each adapter is probed once when it loads, and batches
mix only adapters whose probe gave every row what it gets alone; others are generated one adapter
at a time (``using``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.engine.limits import context_length

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
# Used when the tokenizer has no chat template (vLLM would refuse; a local stand-in is kinder). It
# writes no BOS: prompts it renders are tokenized with the tokenizer's special tokens.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The mixed-batch probe: the same three tokens twice, once for the base and once for the adapter (a
# length other than the batch size: peft refuses activations whose first dimension is not the batch).
PROBE_IDS = [[1, 2, 3], [1, 2, 3]]


class UnknownModel(KeyError):
    pass


class LoadError(Exception):
    """The model cannot be served as asked; the message says what to change."""


def remote_code_files(path: str) -> list[str]:
    """The files of a local model directory that name code of their own (``auto_map``)."""
    found = []
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((Path(path) / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            found.append(name)
    return found


def is_thudm_chatglm(path: str) -> bool:
    """Whether ``path`` holds ChatGLM in THUDM's own layout (model_type chatglm, its own code)."""
    try:
        data = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == "chatglm" and bool(data.get("auto_map"))


IMPORT_HINT = (
    "THUDM's ChatGLM code was written for transformers 4.3x: import the checkpoint once with "
    "`tunelab model import NAME --from DATASET` and deploy the import, which needs no remote code"
)


class ServedModel:
    def __init__(
        self,
        path: str,
        served_name: str,
        device: str = "cpu",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        max_model_len: int | None = None,
    ) -> None:
        self.path = path
        self.name = served_name or Path(path).name
        self.device = device
        if dtype == "auto":
            dtype = "float32" if device == "cpu" else "bfloat16"
        if not trust_remote_code and (files := remote_code_files(path)):
            raise LoadError(
                f"it ships its own Python code (auto_map in {' and '.join(files)}), which the engine runs "
                "only with --trust-remote-code"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        )
        self.model: Any = model.to(device).eval()
        # Prompt plus completion, in tokens: the config's context, or less where asked (vLLM's
        # --max-model-len); more than the model was trained for is refused, as vLLM does by default.
        derived = context_length(model.config)
        if max_model_len is not None and max_model_len > derived:
            raise LoadError(
                f"--max-model-len {max_model_len} is more than the model's context ({derived} tokens, "
                "from its config.json): leave it out or give at most that"
            )
        self.max_model_len = max_model_len or derived
        self.stop_ids = frozenset(
            _ids(self.tokenizer.eos_token_id)
            | _ids(model.config.eos_token_id)
            | _ids(model.generation_config.eos_token_id)
        )
        self.adapters: dict[str, str] = {}
        self.mixable: set[str] = set()  # adapters peft's adapter_names serves correctly
        self.lock = threading.Lock()  # generation and adapter loading take turns
        self.created = 0

    def load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        with self.lock:
            if name in self.adapters:
                raise ValueError(f"adapter {name!r} is already loaded")
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
            self.adapters[name] = path
            if self._mixes(name):
                self.mixable.add(name)
        mixed = "mixed batches" if name in self.mixable else "batches of its own (no mixed batches)"
        log.info("loaded adapter %s from %s; it runs in %s", name, path, mixed)

    def unload_adapter(self, name: str) -> None:
        with self.lock:
            if name not in self.adapters:
                raise UnknownModel(name)
            self.model.delete_adapter(name)
            del self.adapters[name]
            self.mixable.discard(name)

    def _mixes(self, name: str) -> bool:
        """Whether a batch of [base, ``name``] through ``adapter_names`` gives each row what it gets
        alone. Caller holds the lock."""
        ids = torch.tensor(PROBE_IDS, device=self.device)
        with torch.inference_mode():
            try:
                with self.mixing():
                    mixed = self.model(input_ids=ids, adapter_names=[BASE, name]).logits.float()
            except Exception as exc:  # noqa: BLE001  (peft refuses: ValueError on the layout, DoRA, ...)
                log.info("adapter %s cannot share a batch with others: %s", name, exc)
                return False
            with self.using(BASE):
                base = self.model(input_ids=ids[:1]).logits.float()[0]
            with self.using(name):
                alone = self.model(input_ids=ids[:1]).logits.float()[0]
        # Rows served wrongly differ by about the adapter's effect; rounding by less (a random GLM of
        # ChatGLM3-6B's shape, bf16 on an H100: 0.24-0.27 against adapter effects of 0.56-6.5).
        # An adapter that fails runs in batches of its own: slower, never wrong.
        error = max(float((mixed[0] - base).abs().max()), float((mixed[1] - alone).abs().max()))
        effect = float((alone - base).abs().max())
        return error <= 0.5 * effect or error <= 1e-4 * max(1.0, float(base.abs().max()))

    @contextlib.contextmanager
    def mixing(self) -> Iterator[None]:
        """Around a call with ``adapter_names``: when it raises, removes the hooks peft installed
        for it (peft 0.22 leaves them on every LoRA layer, breaking every later call)."""
        try:
            yield
        except BaseException:
            for module in self.model.modules():
                hooks = module._forward_pre_hooks
                for key in [k for k, h in hooks.items() if _is_adapter_names_hook(h)]:
                    del hooks[key]
                    module._forward_pre_hooks_with_kwargs.pop(key, None)
            raise

    @contextlib.contextmanager
    def using(self, adapter: str) -> Iterator[None]:
        """The model with one adapter applied to every row (``BASE``: none). Caller holds the lock."""
        if adapter == BASE:
            with self.model.disable_adapter() if self.adapters else contextlib.nullcontext():
                yield
            return
        if adapter not in self.adapters:
            raise UnknownModel(adapter)
        self.model.set_adapter(adapter, inference_mode=True)
        yield

    def can_mix(self, adapters: set[str]) -> bool:
        return adapters - {BASE} <= self.mixable

    def adapter_of(self, model: str) -> str:
        """The adapter a request for ``model`` uses (``BASE`` for the base model)."""
        if model == self.name:
            return BASE
        if model in self.adapters:
            return model
        raise UnknownModel(model)

    def names(self) -> list[str]:
        return [self.name, *self.adapters]

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        template = None if self.tokenizer.chat_template else FALLBACK_TEMPLATE
        return str(
            self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, chat_template=template
            )
        )

    def encode_chat(self, messages: list[dict[str, Any]], add_special_tokens: bool = False) -> list[int]:
        """A chat's prompt ids: the model's template tokenized without the tokenizer's special tokens
        unless asked (the template writes its BOS or ``[gMASK]sop`` itself); the fallback template
        writes none, so the tokenizer adds its own."""
        add_special_tokens = add_special_tokens or not self.tokenizer.chat_template
        return self.encode(self.chat_prompt(messages), add_special_tokens)

    def encode(self, prompt: str | list[int], add_special_tokens: bool = True) -> list[int]:
        """Token ids of a prompt; ``add_special_tokens=False`` for rendered chat templates."""
        if isinstance(prompt, list):
            return prompt
        return list(self.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def _ids(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, list | tuple) else {int(value)}


def _is_adapter_names_hook(hook: Any) -> bool:
    return getattr(getattr(hook, "func", None), "__name__", "") == "_adapter_names_pre_forward_hook"
