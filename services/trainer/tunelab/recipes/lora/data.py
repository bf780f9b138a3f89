"""Conversation files -> tokenized samples with loss on assistant tokens only.

Input: JSON lines (`.json` or `.jsonl`), one conversation per line, in ChatGLM3's format
`{"conversations": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}`
(also `messages` instead of `conversations`, or raw AdvertiseGen `{"content", "summary"}` pairs).
A message may carry `"loss": false` to leave an assistant turn untrained (documented by ChatGLM3, not
implemented there). Tools are refused, as in ChatGLM3's recipe.

Formats (`chat_format`):
- ChatGLM3's tokenizer (or an imported ChatGLM3's): its own format at token level, exactly as
  `finetune_hf.py` builds it (chatglm3.py);
- otherwise the text is rendered with the tokenizer's chat template (or a plain fallback format), so
  the model is trained on exactly what an OpenAI-style server will send it. Each trained span is what
  the template adds after the assistant's generation prompt: the answer and its end-of-turn token.
Messages after the last trained answer are dropped: a sample ends with that answer.

Truncation keeps the answer: the last trained answer keeps up to `max_output_length` tokens and the
conversation before it is cut from the left (keeping the format's head: a leading BOS, or ChatGLM3's
`[gMASK] sop`) to fit `max_input_length + max_output_length + 1` tokens. ChatGLM3's recipe cut from the
right and could drop the answer entirely.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunelab.recipes.lora.errors import DataError, ModelError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")

# Used when the tokenizer has no chat template (or tunelab.chat_template: fallback). It is saved with
# the adapter, so a server that applies the adapter's chat template sends the same format. Some
# tokenizers (ChatGLM3's remote code) do not pass eos_token to templates: the EOS text is then built in.
FALLBACK_TEMPLATE = (
    "{% if eos_token is not defined or not eos_token %}{% set eos_token = @EOS@ %}{% endif %}"
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Encoded:
    """One conversation in tokens, up to and including its last trained answer."""

    ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss
    answer_start: int  # where the last trained answer starts (right after its generation prompt)
    answer: str  # that answer's text


class Format(Protocol):
    """A chat format: conversations -> tokens and labels."""

    name: str
    head: list[int]  # ids every sample starts with, kept when the conversation is cut from the left

    def encode(self, rows: list[tuple[str, list[dict[str, Any]]]]) -> list[Encoded]: ...


@dataclass(frozen=True)
class Sample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss; aligned with input_ids (the loss shifts them)
    prompt_len: int  # tokens before the last trained answer: the prompt for generation-based eval
    answer: str  # that answer's text: the reference for ROUGE/BLEU


@dataclass
class TokenizedSet:
    path: Path
    samples: list[Sample]
    truncated_prompts: int = 0
    truncated_answers: int = 0
    conversations: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


def read_conversations(path: Path) -> list[tuple[int, list[dict[str, Any]]]]:
    """(line number, messages) for every non-blank line; any problem names the file and line."""
    if path.suffix not in (".json", ".jsonl"):
        raise DataError(f"{path}: only JSON lines files (.json, .jsonl) are supported; convert it first")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if text.lstrip().startswith("["):  # a JSON array instead of JSON lines
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        numbered = list(enumerate(rows, start=1))
    else:
        numbered = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not numbered:
        raise DataError(f"{path} is empty: it needs one JSON object per line with a 'conversations' list")
    return [(lineno, _messages(row, f"{path}:{lineno}")) for lineno, row in numbered]


def _messages(row: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if row.get("tools"):
        raise DataError(f"{where}: 'tools' are not supported by the LoRA recipe (nor by ChatGLM3's)")
    if "conversations" not in row and "messages" not in row and {"content", "summary"} <= row.keys():
        row = {
            "conversations": [
                {"role": "user", "content": row["content"]},
                {"role": "assistant", "content": row["summary"]},
            ]
        }
    messages = row.get("conversations", row.get("messages"))
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: expected a non-empty 'conversations' list of {{role, content}} messages")
    seen_user = trained = False
    for i, m in enumerate(messages, start=1):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise DataError(f"{where}: message {i} needs a string 'role' and a string 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: message {i} has role {m['role']!r}; use one of {', '.join(ROLES)}")
        if m["role"] == "system" and i != 1:
            raise DataError(f"{where}: message {i}: a system message must come first")
        seen_user = seen_user or m["role"] == "user"
        if m["role"] == "assistant":
            if not seen_user:
                raise DataError(f"{where}: message {i}: an assistant message needs a user message before it")
            if not m["content"].strip():
                raise DataError(f"{where}: message {i}: the assistant's content is empty")
            trained = trained or m.get("loss", True) is not False
    if not trained:
        raise DataError(f"{where}: no assistant message to learn from")
    return [{"role": m["role"], "content": m["content"], "loss": m.get("loss", True)} for m in messages]


def last_trained(messages: list[dict[str, Any]]) -> int:
    """Index of the last assistant message that is trained."""
    return max(i for i, m in enumerate(messages) if m["role"] == "assistant" and m["loss"] is not False)


def chat_format(tokenizer: Any, mode: str = "auto") -> Format:
    """The format for `tunelab.chat_template` (auto, fallback, chatglm3) and this tokenizer."""
    from tunelab.recipes.lora.chatglm3 import ChatGLM3Format, has_chatglm3_tokens

    if mode == "chatglm3" or (mode == "auto" and has_chatglm3_tokens(tokenizer)):
        return ChatGLM3Format(tokenizer)
    return ChatFormat(tokenizer, mode)


class ChatFormat:
    """Renders conversations to (text, trained) segments with the tokenizer's chat template."""

    def __init__(self, tokenizer: Any, mode: str = "auto") -> None:
        if mode == "fallback" or not getattr(tokenizer, "chat_template", None):
            if tokenizer.eos_token is None:
                raise ModelError("the tokenizer has neither a chat template nor an EOS token to end answers")
            tokenizer.chat_template = FALLBACK_TEMPLATE.replace("@EOS@", _jinja_string(tokenizer.eos_token))
            self.name = "fallback"
        else:
            self.name = "tokenizer"
        self.tokenizer = tokenizer
        bos = tokenizer.bos_token_id
        self.head: list[int] = [] if bos is None else [int(bos)]

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        return str(
            self.tokenizer.apply_chat_template(
                plain, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )

    def segments(self, messages: list[dict[str, Any]], where: str) -> list[tuple[str, bool]]:
        """Split the rendered conversation (up to its last trained answer) into trained/untrained text."""
        last = last_trained(messages)
        full = self.render(messages[: last + 1], add_generation_prompt=False)
        segments: list[tuple[str, bool]] = []
        cursor = 0
        for i, m in enumerate(messages[: last + 1]):
            if m["role"] != "assistant" or m["loss"] is False:
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            upto = self.render(messages[: i + 1], add_generation_prompt=False)
            start = len(before)
            if not (full.startswith(upto) and upto.startswith(before) and start >= cursor):
                raise ModelError(
                    f"{where}: the tokenizer's chat template does not render this conversation turn by turn, "
                    "so answers can't be located; set tunelab.chat_template: fallback"
                )
            segments += [(full[cursor:start], False), (upto[start:], True)]
            cursor = len(upto)
        return [(text, trained) for text, trained in segments if text]

    def encode(self, rows: list[tuple[str, list[dict[str, Any]]]]) -> list[Encoded]:
        """Render every conversation, tokenize all segments (batched), join each one's segments."""
        rendered = [self.segments(messages, where) for where, messages in rows]
        texts = [text for segments in rendered for text, _ in segments]
        ids: list[list[int]] = []
        for start in range(0, len(texts), 2048):
            ids += self.tokenizer(texts[start : start + 2048], add_special_tokens=False)["input_ids"]
        result, offset = [], 0
        for segments, (_, messages) in zip(rendered, rows, strict=True):
            joined: list[int] = []
            labels: list[int] = []
            answer_start = 0
            for j, (_, trained) in enumerate(segments):
                piece = ids[offset + j]
                answer_start = len(joined) if trained else answer_start
                joined += piece
                labels += piece if trained else [IGNORE_INDEX] * len(piece)
            offset += len(segments)
            result.append(Encoded(joined, labels, answer_start, messages[last_trained(messages)]["content"]))
        return result


def _jinja_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def tokenize_file(
    path: Path, tokenizer: Any, fmt: Format, max_input_length: int, max_output_length: int
) -> TokenizedSet:
    """Read, encode (batched) and truncate every conversation of one file."""
    rows = read_conversations(path)
    encoded = fmt.encode([(f"{path}:{lineno}", messages) for lineno, messages in rows])
    result = TokenizedSet(path=path, samples=[], conversations=len(rows))
    max_length = max_input_length + max_output_length + 1
    head = fmt.head
    for e in encoded:
        answer_ids = e.ids[e.answer_start :][:max_output_length]
        answer_labels = e.labels[e.answer_start :][:max_output_length]
        result.truncated_answers += len(answer_ids) < len(e.ids) - e.answer_start
        prefix_ids, prefix_labels = e.ids[: e.answer_start], e.labels[: e.answer_start]
        budget = max_length - len(answer_ids)
        if len(prefix_ids) > budget:
            result.truncated_prompts += 1
            keep = len(head) if head and prefix_ids[: len(head)] == head else 0
            tail = budget - keep
            prefix_ids = prefix_ids[:keep] + prefix_ids[len(prefix_ids) - tail :]
            prefix_labels = [IGNORE_INDEX] * keep + prefix_labels[len(prefix_labels) - tail :]
        result.samples.append(
            Sample(
                input_ids=prefix_ids + answer_ids,
                labels=prefix_labels + answer_labels,
                prompt_len=len(prefix_ids),
                answer=e.answer,
            )
        )
    lengths = [len(s.input_ids) for s in result.samples]
    result.stats = {
        "samples": len(lengths),
        "mean_tokens": sum(lengths) / len(lengths),
        "max_tokens": max(lengths),
    }
    return result
