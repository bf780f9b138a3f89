"""A tiny causal LM whose layers run on sequence-first activations ``[seq, batch, hidden]``, as
ChatGLM3's own code does (its fused ``query_key_value`` and ``dense`` names too).

Tests copy this file into a model directory with ``auto_map`` pointing at it, so the engine loads it
as remote code (``--trust-remote-code``). THUDM's own ChatGLM3 code cannot stand in: it does not load
under transformers 5 (see the fixture's README). No KV cache: every step reruns the whole sequence.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class SeqFirstConfig(PretrainedConfig):
    model_type = "seqfirst"

    def __init__(
        self, vocab_size: int = 256, hidden_size: int = 32, num_hidden_layers: int = 2, **kwargs: Any
    ) -> None:
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        kwargs.setdefault("use_cache", False)
        super().__init__(**kwargs)


class SeqFirstBlock(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query_key_value = nn.Linear(hidden, 3 * hidden)
        self.dense = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query_key_value(x).chunk(3, dim=-1)  # each [seq, batch, hidden]
        scores = torch.einsum("sbh,tbh->bst", q, k) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        return x + self.dense(torch.einsum("bst,tbh->sbh", scores.softmax(-1), v))


class SeqFirstForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = SeqFirstConfig

    def __init__(self, config: SeqFirstConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        blocks = [SeqFirstBlock(config.hidden_size) for _ in range(config.num_hidden_layers)]
        self.layers = nn.ModuleList(blocks)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> CausalLMOutputWithPast:
        seq = input_ids.shape[1]
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        causal = torch.ones(seq, seq, dtype=torch.bool, device=input_ids.device).tril()
        allowed = causal[None] & mask[:, None, :].bool()  # [batch, query, key]
        x = self.embed(input_ids).transpose(0, 1)  # sequence-first from here on
        for layer in self.layers:
            x = layer(x, allowed)
        return CausalLMOutputWithPast(logits=self.lm_head(x.transpose(0, 1)))
