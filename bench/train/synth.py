"""The benchmark's inputs: a sentencepiece tokenizer with ChatGLM3's id layout and AdvertiseGen-shaped
conversations whose lengths in tokens are the real ones (throughput does not depend on the words).

Tokenizer: a BPE `tokenizer.model` trained by the ChatGLM3 stand-in's trainer
(`scripts/chatglm3_standin.train_tokenizer`: ChatGLM3's settings, unk 0 / bos 1 / eos 2, byte fallback)
on a generated corpus of "words" (1-4 CJK characters, Zipf-distributed). Full size: 64,789 pieces, the
real ChatGLM3 vocabulary's size, so the nine special tokens get ChatGLM3's own ids (`[gMASK]` 64790,
`sop` 64792, `<|user|>` 64795, `<|assistant|>` 64796) and the model's 65,024 embedding rows are the real
padded vocabulary; trained in ~2 s. Tiny (the fixture's 1,280-row model): 1,200 pieces.

Lengths: an AdvertiseGen prompt is 3-9 `key#value` attributes and its answer a 60-150+ character ad
copy; with ChatGLM3's tokenizer that is a prompt of about 12-90 tokens and an answer of about 30-300,
a sample of about 150 tokens (the length the reference measurement reports). Here a prompt's content
has N(35, 10) tokens clipped to [12, 90], an answer's N(106, 32) clipped to [30, 300]: words are
added until the count is reached (sentencepiece never merges across the spaces between words, so a
text's tokens are the sum of its words'), plus ChatGLM3's 9 format tokens
(`[gMASK] sop <|user|> \\n ... <|assistant|> \\n ... </s>`, "\\n" being 2 tokens): 150 on average.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FULL_PIECES = 64789  # ChatGLM3-6B's tokenizer.model
TINY_PIECES = 1200  # the fixture's tokenizer.model
sys.path.insert(0, str(REPO / "scripts"))  # as the demo and the e2e test import the stand-in

import chatglm3_standin  # noqa: E402


class Words:
    """A Zipf-distributed vocabulary of CJK "words", sized so that `pieces` BPE pieces can be learnt."""

    def __init__(self, pieces: int, seed: int = 0) -> None:
        rng = random.Random(seed)
        alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + min(3000, pieces // 4))]
        words: set[str] = set()
        while len(words) < 2 * pieces:
            words.add("".join(rng.choice(alphabet) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))))
        self.words = sorted(words)
        rng.shuffle(self.words)
        self.cumulative = list(itertools.accumulate(1 / (rank + 10) for rank in range(len(self.words))))
        self.pieces = pieces

    def sample(self, rng: random.Random, k: int) -> list[str]:
        return rng.choices(self.words, cum_weights=self.cumulative, k=k)


def train_tokenizer(words: Words, lines: int = 0) -> bytes:
    """tokenizer.model bytes: the stand-in's sentencepiece trainer on a corpus drawn from `words`."""
    rng = random.Random(1)
    corpus = [" ".join(words.sample(rng, 20)) for _ in range(lines or max(2000, 3 * words.pieces))]
    model: bytes = chatglm3_standin.train_tokenizer(corpus, words.pieces)
    return model


def conversations(count: int, words: Words, sp_model: bytes, seed: int = 0) -> list[dict[str, Any]]:
    """`count` conversations whose contents have the drawn lengths in tokens exactly."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    rng = random.Random(seed)
    sizes: dict[str, int] = {}
    singles: list[str] = []

    def text(mean: float, sd: float, low: int, high: int) -> str:
        target = min(high, max(low, round(rng.gauss(mean, sd))))
        out: list[str] = []
        n = 0
        while n < target:
            word = words.sample(rng, 1)[0]
            if word not in sizes:
                sizes[word] = len(sp.encode(word))  # with the dummy prefix: "▁word", as after a space
                if sizes[word] == 1:
                    singles.append(word)
            if n + sizes[word] > target:  # one-token words fill the rest: the count is exact
                if not singles:
                    continue
                word = rng.choice(singles)
            out.append(word)
            n += sizes[word]
        return " ".join(out)

    return [
        {
            "conversations": [
                {"role": "user", "content": text(35, 10, 12, 90)},
                {"role": "assistant", "content": text(106, 32, 30, 300)},
            ]
        }
        for _ in range(count)
    ]


def write_data(data_dir: Path, rows: list[dict[str, Any]]) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "train.json").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return data_dir
