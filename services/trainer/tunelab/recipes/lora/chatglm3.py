"""ChatGLM3's chat format at token level, exactly as ChatGLM3's `finetune_hf.py` (`process_batch`) builds it.

    [gMASK] sop  <|system|> "\\n" system  <|user|> "\\n" question  <|assistant|> "\\n" answer ... </s>

Every message is its role token, the tokens of a bare "\\n" and the tokens of its content, each
encoded on its own (no special tokens added); the conversation ends with eos once. The loss mask is
True on assistant messages' tokens (role token included) and is then shifted right by one, so the
`<|assistant|>` token is not trained but the "\\n" after it, the answer, and the token after the turn
(the next role token, or the final eos) are: the model learns to stop.

Chosen by `data.chat_format` when the tokenizer has `[gMASK]`, `sop`, `<|user|>` and `<|assistant|>`
(ChatGLM3's tokenizer, and the tokenizer of a model imported with `tunelab.recipes.glm`), or with
`tunelab.chat_template: chatglm3`. Two differences from `finetune_hf.py`, both for data it could not
handle: an assistant message with `"loss": false` stays untrained (finetune_hf.py ignores the key), and
messages after the last trained answer are dropped (the conversation ends with that answer and eos), so
the recipe's truncation (data.py: cut the prompt, keep the answer) applies as to every format.
"""

from __future__ import annotations

from typing import Any

from tunelab.recipes.lora.data import IGNORE_INDEX, Encoded, last_trained
from tunelab.recipes.lora.errors import ModelError

NAME = "chatglm3"
REQUIRED = ("[gMASK]", "sop", "<|user|>", "<|assistant|>")  # what makes a tokenizer ChatGLM3's
ROLES = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
BATCH = 2048  # contents tokenized per call


def _special_ids(tokenizer: Any) -> dict[str, int]:
    """ChatGLM3's special tokens among the tokenizer's added tokens, by name. The import spells one as
    `<name>` where the vocabulary has a piece `name` (tunelab.recipes.glm.tokenizer); a plain
    vocabulary lookup of "sop" would then find that piece, so only added tokens count."""
    added = tokenizer.added_tokens_encoder
    found = {}
    for name in (*REQUIRED, *ROLES.values()):
        for text in (name, f"<{name}>"):
            if text in added:
                found[name] = int(added[text])
                break
    return found


def has_chatglm3_tokens(tokenizer: Any) -> bool:
    return all(token in _special_ids(tokenizer) for token in REQUIRED)


class ChatGLM3Format:
    """Conversations -> ids and labels as `finetune_hf.py` builds them (see the module docstring)."""

    name = NAME

    def __init__(self, tokenizer: Any) -> None:
        vocab = _special_ids(tokenizer)
        missing = [t for t in REQUIRED if t not in vocab]
        if missing:
            raise ModelError(
                f"tunelab.chat_template is chatglm3 but the tokenizer lacks {', '.join(missing)}; use auto"
            )
        if tokenizer.eos_token_id is None:
            raise ModelError("the tokenizer has no EOS token to end ChatGLM3 conversations with")
        self.tokenizer = tokenizer
        self.roles = {role: vocab[token] for role, token in ROLES.items() if token in vocab}
        self.head = [vocab["[gMASK]"], vocab["sop"]]  # kept when a long conversation is cut
        self.eos = int(tokenizer.eos_token_id)
        self.newline = self._encode(["\n"])[0]

    def encode(self, rows: list[tuple[str, list[dict[str, Any]]]]) -> list[Encoded]:
        """Every conversation up to its last trained answer, in tokens (`where` names it in errors)."""
        kept = [messages[: last_trained(messages) + 1] for _, messages in rows]
        contents = self._encode([m["content"] for messages in kept for m in messages])
        result, at = [], 0
        for (where, _), messages in zip(rows, kept, strict=True):
            result.append(self._conversation(messages, contents[at : at + len(messages)], where))
            at += len(messages)
        return result

    def _conversation(self, messages: list[dict[str, Any]], contents: list[list[int]], where: str) -> Encoded:
        ids, mask = list(self.head), [False] * len(self.head)
        answer_start = 0
        for m, content in zip(messages, contents, strict=True):
            if m["role"] not in self.roles:
                token = ROLES[m["role"]]
                raise ModelError(f"{where}: the tokenizer has no {token} token for a {m['role']} message")
            trained = m["role"] == "assistant" and m["loss"] is not False
            if trained:
                answer_start = len(ids) + 1  # after the role token: the prompt for generation ends with it
            piece = [self.roles[m["role"]], *self.newline, *content]
            ids += piece
            mask += [trained] * len(piece)
        ids.append(self.eos)
        labels = [t if trained else IGNORE_INDEX for t, trained in zip(ids, [False, *mask], strict=True)]
        return Encoded(ids, labels, answer_start, messages[-1]["content"])

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Text as text: "<|user|>" typed in a message is its characters, never the role token (as THUDM's
        tokenizer encodes contents), so data can't forge turns."""
        ids: list[list[int]] = []
        for start in range(0, len(texts), BATCH):
            batch = texts[start : start + BATCH]
            ids += self.tokenizer(batch, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return ids
