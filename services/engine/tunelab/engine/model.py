"""The served model: a Hugging Face causal LM, its tokenizer, and LoRA adapters loaded with peft
under their names. Several adapters and the plain base can share one batch (peft's
``adapter_names``)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
# Used when the tokenizer has no chat template (vLLM would refuse; a local stand-in is kinder).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UnknownModel(KeyError):
    pass


class ServedModel:
    def __init__(
        self,
        path: str,
        served_name: str,
        device: str = "cpu",
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        self.path = path
        self.name = served_name or Path(path).name
        self.device = device
        if dtype == "auto":
            dtype = "float32" if device == "cpu" else "bfloat16"
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        )
        self.model: Any = model.to(device).eval()
        self.adapters: dict[str, str] = {}
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
        log.info("loaded adapter %s from %s", name, path)

    def unload_adapter(self, name: str) -> None:
        with self.lock:
            if name not in self.adapters:
                raise UnknownModel(name)
            self.model.delete_adapter(name)
            del self.adapters[name]

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

    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    @property
    def eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            found.add(self.tokenizer.eos_token_id)
        return found
