"""A tiny ChatGLM3 in THUDM's own on-disk layout, as a download of THUDM/chatglm3-6b is laid out.

`make demo` and the e2e test register it "as downloaded" and import it with `tunelab model import`,
the step the real 12 GB checkpoint goes through. Everything is written here from published facts
about ChatGLM3's layout, no THUDM code involved: `config.json` with THUDM's keys, THUDM's tensor
names and shapes (`tunelab.recipes.glm.layout`), and a sentencepiece BPE `tokenizer.model` with
ChatGLM3's id layout (unk 0, bos 1, eos 2; byte fallback; a dummy-prefix space; digits split; the
9 special tokens follow the pieces). The weights are pretrained briefly on ad copy, so that, like a
real base model, it already writes the language before the LoRA job teaches it the task.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.recipes.glm.tokenizer import SPECIAL_TOKENS as SPECIALS

# THUDM's config.json keys, tiny sizes (hidden 64, 2 layers, 4 heads, 2 KV groups of 16 channels).
THUDM_CONFIG: dict[str, Any] = {
    "_name_or_path": "THUDM/chatglm3-6b",
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "auto_map": {
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
    },
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "bias_dropout_fusion": True,
    "ffn_hidden_size": 128,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "hidden_size": 64,
    "kv_channels": 16,
    "layernorm_epsilon": 1e-05,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 4,
    "num_layers": 2,
    "original_rope": True,
    "padded_vocab_size": 1280,
    "post_layer_norm": True,
    "rmsnorm": True,
    "seq_length": 8192,
    "use_cache": True,
    "torch_dtype": "float32",
    "transformers_version": "4.30.2",
    "tie_word_embeddings": False,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
THUDM_TOKENIZER_CONFIG: dict[str, Any] = {
    "name_or_path": "THUDM/chatglm3-6b",
    "remove_space": False,
    "do_lower_case": False,
    "tokenizer_class": "ChatGLMTokenizer",
    "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
}
PIECES = 1200  # sentencepiece pieces; ChatGLM3's 9 special tokens take the next ids


def train_tokenizer(lines: list[str], pieces: int = PIECES) -> bytes:
    """A sentencepiece BPE model with ChatGLM3's settings, trained on `lines`."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=pieces,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def build_chatglm3_standin(directory: Path, pretrain_steps: int, echo: Callable[[str], None] = print) -> Path:
    """The stand-in in `directory` (once: an earlier run's is reused)."""
    if (directory / "config.json").is_file():
        return directory
    import sentencepiece as spm
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    from tunelab.recipes import advertisegen_sample
    from tunelab.recipes.glm.config import glm_config
    from tunelab.recipes.glm.layout import write_chatglm3_layout

    partial = directory.with_name(f"{directory.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    sp_model = train_tokenizer(advertisegen_sample.corpus().splitlines())
    (partial / "tokenizer.model").write_bytes(sp_model)
    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    stop_ids = [2, PIECES + SPECIALS.index("<|user|>"), PIECES + SPECIALS.index("<|observation|>")]
    config_dict, _ = glm_config(THUDM_CONFIG, stop_token_ids=stop_ids)
    torch.manual_seed(0)
    config = GlmConfig(**{k: v for k, v in config_dict.items() if k not in ("architectures", "model_type")})
    config.initializer_range = 0.1  # a 64-wide model barely moves from transformers' 0.02
    model = GlmForCausalLM(config)
    if pretrain_steps:
        echo(_pretrain(model, sp, pretrain_steps))
    write_chatglm3_layout(model, model.config.to_dict(), partial)
    (partial / "tokenizer_config.json").write_text(json.dumps(THUDM_TOKENIZER_CONFIG, indent=2) + "\n")
    partial.rename(directory)
    return directory


def _pretrain(model: Any, sp: Any, steps: int, batch_size: int = 16) -> str:
    """Every weight trained as a causal LM on ad copy (the summaries of generated records)."""
    import torch

    from tunelab.recipes.advertisegen_sample import generate

    started = time.monotonic()
    prefix = [PIECES + SPECIALS.index("[gMASK]"), PIECES + SPECIALS.index("sop")]  # as ChatGLM3 sees text
    texts = [[*prefix, *sp.encode(r["summary"])[:124], 2] for r in generate(2000, seed=7)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for step in range(steps):
        batch = [texts[(step * batch_size + i) % len(texts)] for i in range(batch_size)]
        width = max(len(t) for t in batch)
        ids = torch.tensor([t + [0] * (width - len(t)) for t in batch])
        mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return (
        f"  pretrained the stand-in on ad copy: {steps} steps, loss {losses[0]:.2f} → {losses[-1]:.2f} "
        f"({time.monotonic() - started:.0f} s)"
    )
