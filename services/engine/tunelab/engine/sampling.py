"""Per-request sampling inside one batched ``generate``: each row keeps its own temperature,
top-p, top-k and seed. The processor samples the token itself and leaves only that token
possible, so ``generate`` runs greedy and simply takes it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5 or self.top_k == 1


class RowSampler:
    """A ``LogitsProcessor``: (input_ids, scores[batch, vocab]) → scores with one finite entry per row."""

    def __init__(self, rows: list[Sampling]) -> None:
        self.rows = rows
        self.generators: list[torch.Generator | None] = []
        for s in rows:
            gen = None
            if s.seed is not None:
                gen = torch.Generator().manual_seed(s.seed)
            self.generators.append(gen)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, float("-inf"))
        for i, s in enumerate(self.rows):
            out[i, self.pick(i, s, scores[i].float())] = 0.0
        return out  # type: ignore[return-value]

    def pick(self, i: int, s: Sampling, logits: torch.Tensor) -> int:
        if s.greedy:
            return int(torch.argmax(logits))
        logits = logits / s.temperature
        if s.top_k > 0:
            kth = torch.topk(logits, min(s.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if s.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < s.top_p
            mask = torch.zeros_like(probs, dtype=torch.bool)
            mask[order[keep]] = True
            probs = torch.where(mask, probs, torch.zeros_like(probs))
            probs = probs / probs.sum()
        return int(torch.multinomial(probs, 1, generator=self.generators[i]))
