"""THUDM's own ChatGLMTokenizer, loaded from the fixture with today's transformers (tests only).

The fixture's `tokenization_chatglm.py` was written for transformers 4.3x. It is imported from its
file (no copy, not even into the hub module cache that `trust_remote_code` would use) and patched in
memory by subclassing, where transformers 5 breaks it:

- `_pad()` lacks the `padding_side` argument transformers now passes (THUDM's 2025 revision added it);
  only left padding is ChatGLM3's, so any other side is an error rather than silently ignored.
- `build_chat_input()` calls `batch_encode_plus`, which transformers 5 removed; the stand-in does what
  4.3x did with a list of ids: `prepare_for_model` (adding `[gMASK] sop`), then pad.

Everything else the tests use (encode, decode, `get_command`, `build_single_message`, the inner
`SPTokenizer`) works unchanged.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from transformers.tokenization_utils_base import BatchEncoding
from transformers.utils import PaddingStrategy


def load_chatglm_tokenizer(fixture_dir: Path, **kwargs: Any) -> Any:
    """An instance of THUDM's ChatGLMTokenizer for `fixture_dir` (kwargs override tokenizer_config.json)."""
    base = _thudm_module(fixture_dir).ChatGLMTokenizer

    class PatchedChatGLMTokenizer(base):  # type: ignore[misc, valid-type]
        def _pad(
            self,
            encoded_inputs: Any,
            max_length: int | None = None,
            padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
            pad_to_multiple_of: int | None = None,
            padding_side: str | None = None,
            return_attention_mask: bool | None = None,
        ) -> dict:
            if padding_side not in (None, "left"):
                raise ValueError(f"ChatGLMTokenizer pads on the left only, not {padding_side!r}")
            return super()._pad(
                encoded_inputs, max_length, padding_strategy, pad_to_multiple_of, return_attention_mask
            )

        def batch_encode_plus(
            self, batch: list[list[int]], return_tensors: str | None = None, **_: Any
        ) -> BatchEncoding:
            encoded = [self.prepare_for_model(ids, add_special_tokens=True) for ids in batch]
            inputs = {key: [e[key] for e in encoded] for key in encoded[0]}
            return self.pad(inputs, padding=True, return_tensors=return_tensors)

    config = json.loads((fixture_dir / "tokenizer_config.json").read_text())
    options = {k: v for k, v in config.items() if k not in ("auto_map", "tokenizer_class", "name_or_path")}
    return PatchedChatGLMTokenizer(vocab_file=str(fixture_dir / "tokenizer.model"), **{**options, **kwargs})


def _thudm_module(fixture_dir: Path) -> Any:
    spec = importlib.util.spec_from_file_location(
        "thudm_tokenization_chatglm", fixture_dir / "tokenization_chatglm.py"
    )
    assert spec is not None and spec.loader is not None, fixture_dir
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
