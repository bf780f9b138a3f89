"""Tiny models shaped like the imported ChatGLM3, built here (never downloaded).

- ``chatglm3_tokenizer``: a fast tokenizer like the importer's: a small byte-level BPE with ChatGLM3's
  id layout for ``<unk> <s> </s>`` (0, 1, 2), its 9 special tokens after the pieces, a post-processor
  that prepends ``[gMASK] sop`` when ``add_special_tokens`` is on, and ChatGLM3's chat template
  (which writes ``[gMASK]sop`` itself). Until the importer lands, this stands in for its output.
- ``build_glm``: a random ``GlmForCausalLM`` whose generation_config.json stops on ``</s>``,
  ``<|user|>`` and ``<|observation|>``, wired so that some tokens are always followed by others
  (``FORCED``): after ``@`` comes ``~`` and after ``~`` comes ``<|user|>``; after ``%`` comes ``^``,
  then ``<|observation|>``. How: four hidden dimensions are kept for these tokens alone (zero in every
  other embedding and in what the layers write back to the residual stream), and the lm_head rows of
  the followers read only those dimensions, so they win exactly after their trigger.
- ``build_seqfirst``: a random sequence-first model (``seqfirst_model.py``) loaded as remote code.
- ``build_lora``: a random, non-zero LoRA adapter for a model directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tunelab.recipes.glm.tokenizer import SPECIAL_TOKENS as SPECIALS  # ChatGLM3's 9, in order

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}[gMASK]sop{% endif %}"
    "<|{{ message['role'] }}|>\n {{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TEXT = ["hello world, a tiny model writes ad copy", "the quick brown fox jumps", "类型#上衣*颜色#黑色"]
# trigger -> the token the model always writes after it
FORCED = {"@": "~", "~": "<|user|>", "%": "^", "^": "<|observation|>"}


def chatglm3_tokenizer(out: Path):  # -> a transformers fast tokenizer, saved to ``out``
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXT * 20, trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    ids = [(s, tok.token_to_id(s)) for s in ("[gMASK]", "sop")]
    tok.post_processor = processors.TemplateProcessing(
        single="[gMASK] sop $A", pair="[gMASK] sop $A $B", special_tokens=ids
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
        additional_special_tokens=list(SPECIALS),
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def stop_ids(tokenizer) -> list[int]:
    return [2, *tokenizer.convert_tokens_to_ids(["<|user|>", "<|observation|>"])]


def token_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (text, ids)
    return int(ids[0])


def build_glm(out: Path, seed: int = 0) -> Path:
    from transformers import GenerationConfig, GlmConfig, GlmForCausalLM

    tokenizer = chatglm3_tokenizer(out)
    eos = stop_ids(tokenizer)
    config = GlmConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=eos,
    )
    torch.manual_seed(seed)
    model = GlmForCausalLM(config).eval()
    with torch.no_grad():
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        kept = len(FORCED)
        embed[:, :kept] = 0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:kept] = 0
            layer.mlp.down_proj.weight[:kept] = 0
        for dim, (trigger, follower) in enumerate(FORCED.items()):
            embed[token_id(tokenizer, trigger), dim] = 50.0
            if follower in SPECIALS:
                follows = tokenizer.convert_tokens_to_ids(follower)
            else:
                follows = token_id(tokenizer, follower)
            head[follows] = 0  # its logit: 0 after any other token, where some other token is higher
            head[follows, dim] = 10.0
    model.save_pretrained(out)
    GenerationConfig(eos_token_id=eos, pad_token_id=0).save_pretrained(out)
    return out


def build_seqfirst(out: Path, seed: int = 0) -> Path:
    from seqfirst_model import SeqFirstConfig, SeqFirstForCausalLM

    tokenizer = chatglm3_tokenizer(out)
    torch.manual_seed(seed)
    config = SeqFirstConfig(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=stop_ids(tokenizer))
    SeqFirstForCausalLM(config).save_pretrained(out)
    shutil.copy(Path(__file__).with_name("seqfirst_model.py"), out / "seqfirst_model.py")
    data = json.loads((out / "config.json").read_text())
    data["auto_map"] = {
        "AutoConfig": "seqfirst_model.SeqFirstConfig",
        "AutoModelForCausalLM": "seqfirst_model.SeqFirstForCausalLM",
    }
    (out / "config.json").write_text(json.dumps(data, indent=2))
    return out


def build_lora(base: Path, out: Path, target_modules: list[str], trust_remote_code: bool = False) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=trust_remote_code)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=target_modules, init_lora_weights=False))
    lora.save_pretrained(out)
    return out
