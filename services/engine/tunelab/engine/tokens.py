"""One token as the logprobs of the OpenAI API show it: its text and its bytes.

A token of a byte-level BPE (GPT-2's, Llama 3's, the imported ChatGLM3's) is a run of bytes written
in GPT-2's byte alphabet; a SentencePiece token writes a leading space as ``▁`` and a lone byte as
``<0xE5>``. Decoding such a token on its own loses what makes it useful to a caller (the space,
half a character), so both layouts are read back to the exact bytes, and the text is those bytes
as UTF-8 (a half character as U+FFFD). Other tokenizers fall back to decoding the token alone.
Special tokens are shown as they are written (``<|im_end|>``).
"""

from __future__ import annotations

import re
from typing import Any

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's ``bytes_to_unicode``, inverted: the character that stands for each byte → the byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


BYTE_ALPHABET = _byte_alphabet()


class TokenText:
    """``piece(id)`` → (text, bytes) of one token, cached per id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.special = frozenset(tokenizer.all_special_ids)
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = "ByteLevel" in repr(decoder)
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def piece(self, token_id: int) -> tuple[str, list[int]]:
        found = self._cache.get(token_id)
        if found is None:
            found = self._cache[token_id] = self._read(token_id)
        return found

    def _read(self, token_id: int) -> tuple[str, list[int]]:
        raw = self.tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(raw, str):
            raw = ""
        if token_id in self.special:
            return raw, list(raw.encode())
        if self.byte_level and raw and all(ch in BYTE_ALPHABET for ch in raw):
            data = bytes(BYTE_ALPHABET[ch] for ch in raw)
        elif m := _BYTE_PIECE.fullmatch(raw):
            data = bytes([int(m.group(1), 16)])
        elif "▁" in raw:
            data = raw.replace("▁", " ").encode()
        else:
            data = str(self.tokenizer.decode([token_id], skip_special_tokens=False)).encode()
        return data.decode("utf-8", errors="replace"), list(data)
