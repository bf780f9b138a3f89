"""Logprobs in the OpenAI API's two shapes, from the batcher's :class:`TokenLogprob` steps.

Completions (``logprobs: N``): ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``,
one entry per token; each ``top_logprobs`` entry maps token text → logprob for the sampled token
and the N most likely (so up to N + 1 entries, as OpenAI and vLLM give them); an echoed prompt's
first token has no logprob (``None``). ``text_offset`` counts characters of the token texts from
where the answer starts, as vLLM counts them.

Chat (``logprobs: true, top_logprobs: N``): ``{"content": [{"token", "logprob", "bytes",
"top_logprobs": [N of {"token", "logprob", "bytes"}]}]}``.

Token texts can collide (two byte tokens that are each half a character both read U+FFFD, and
completions key ``top_logprobs`` by text); vLLM's ``return_tokens_as_token_ids`` names each token
``token_id:N`` instead (``as_ids``), with ``bytes`` and ``text_offset`` still from its text.

A logprob of ``-inf`` (a token the model rules out) is written as -9999.0, as vLLM writes it: JSON
has no infinity.
"""

from __future__ import annotations

from typing import Any

from tunelab.engine.batcher import TokenLogprob
from tunelab.engine.tokens import TokenText

FLOOR = -9999.0

# A token of the answer and its step, or (the echoed prompt's first token) no step.
Entry = tuple[int, TokenLogprob | None]


def _value(logprob: float) -> float:
    return max(logprob, FLOOR)


def _name(token: int, text: TokenText, as_ids: bool) -> str:
    return f"token_id:{token}" if as_ids else text.piece(token)[0]


def completion_logprobs(
    entries: list[Entry], text: TokenText, offset: int = 0, as_ids: bool = False
) -> dict[str, Any]:
    """The completions shape of ``entries``; ``offset``: the text offset of the first one."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []
    for token, step in entries:
        name = _name(token, text, as_ids)
        tokens.append(name)
        text_offset.append(offset)
        offset += len(text.piece(token)[0])
        if step is None:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs.append(_value(step.logprob))
        top = {name: _value(step.logprob)}
        for alt, logprob in step.top:
            top.setdefault(_name(alt, text, as_ids), _value(logprob))
        top_logprobs.append(top)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }


def text_length(entries: list[Entry], text: TokenText) -> int:
    """How far ``entries`` move the completions ``text_offset``."""
    return sum(len(text.piece(token)[0]) for token, _ in entries)


def chat_logprobs(steps: list[TokenLogprob], text: TokenText, as_ids: bool = False) -> dict[str, Any]:
    """The chat shape of ``steps``."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        return {
            "token": _name(token, text, as_ids),
            "logprob": _value(logprob),
            "bytes": text.piece(token)[1],
        }

    content = []
    for step in steps:
        top = [entry(alt, logprob) for alt, logprob in step.top]
        content.append({**entry(step.token, step.logprob), "top_logprobs": top})
    return {"content": content}
