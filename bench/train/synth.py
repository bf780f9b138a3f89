"""The benchmark's inputs: a tokenizer whose tokens are words, AdvertiseGen-shaped conversations with the
real length distribution in tokens, and a randomly initialised Llama-shaped model with ChatGLM3-6B's
dimensions (throughput does not depend on weight values).

Lengths: an AdvertiseGen prompt is 3-9 `key#value` attributes and its answer a 60-150+ character ad
copy; with ChatGLM3's tokenizer that is a prompt of about 12-90 tokens and an answer of about 30-300,
a sample of 150 tokens on average (the length the reference measurement reports). Here a prompt has
N(36, 10) words clipped to [12, 90], an answer N(108, 32) clipped to [30, 300], and one word is one
token, so the token lengths are exact: prompt + answer + 5 template tokens, 149 on average.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPECIAL = ["<unk>", "<pad>", "</s>", "[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>"]
# ChatGLM3's layout: [gMASK]sop<|user|>\n prompt <|assistant|>\n answer </s>
CHAT_TEMPLATE = (
    "{{ '[gMASK]sop' }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Shape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int


CHATGLM3_6B = Shape(65024, 4096, 13696, 28, 32, 2)  # ChatGLM3-6B's dimensions (multi-query: 2 groups)
TINY = Shape(512, 64, 128, 2, 4, 2)


def conversations(count: int, vocab_size: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    first = len(SPECIAL)

    def words(mean: float, sd: float, low: int, high: int) -> str:
        n = min(high, max(low, round(rng.gauss(mean, sd))))
        return " ".join(f"w{rng.randrange(first, vocab_size)}" for _ in range(n))

    return [
        {
            "conversations": [
                {"role": "user", "content": words(36, 10, 12, 90)},
                {"role": "assistant", "content": words(108, 32, 30, 300)},
            ]
        }
        for _ in range(count)
    ]


def write_data(data_dir: Path, count: int, vocab_size: int, seed: int = 0) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = conversations(count, vocab_size, seed)
    (data_dir / "train.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data_dir


def tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL)}
    vocab |= {f"w{i}": i for i in range(len(SPECIAL), vocab_size)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="</s>",
        additional_special_tokens=SPECIAL[3:],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def model_config(shape: Shape, tok: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        use_cache=False,
    )


def build_model(shape: Shape, tok: Any, device: Any, dtype: Any) -> Any:
    """Random weights (transformers' own init, std 0.02), made directly on `device` in `dtype`."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(model_config(shape, tok), dtype=dtype)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def save_model(model: Any, tok: Any, model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    return model_dir
