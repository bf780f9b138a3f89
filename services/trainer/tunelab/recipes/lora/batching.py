"""Batches: padded (like ChatGLM3's recipe) or packed rows with no attention across samples.

A `Layout` plans which samples go into which row of which micro-batch, and turns a plan into
tensors. The order of an epoch depends only on (seed, epoch), so the stream of micro-batches can be
restarted at any index: resuming needs no dataloader state.

Packed rows hold several samples back to back, padded to a fixed `pack_length`; position ids restart
at 0 for every sample, and a sample never attends to another one. Two ways to enforce that:
- "position_ids": no attention mask; the model derives per-sample (varlen) attention from the
  restarting position ids (transformers does this for its own models: block-diagonal masks for
  sdpa/eager/flex, varlen kernels for FlashAttention);
- "mask": an explicit 4D block-diagonal causal mask, for models that only honour masks.
`choose_packing_mode` runs a small probe on the real model and keeps the first mode that isolates
samples, so a model that would silently attend across samples is caught before training.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from tunelab.recipes.lora.data import IGNORE_INDEX, Sample
from tunelab.recipes.lora.errors import ModelError

Plan = list[list[int]]  # rows of sample indices for one micro-batch
Autocast = Callable[[], contextlib.AbstractContextManager[Any]]  # mixed-precision context for forwards


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, L]
    labels: torch.Tensor  # [B, L], IGNORE_INDEX where no loss
    attention_mask: torch.Tensor | None  # [B, L] padding mask, [B, 1, L, L] additive mask, or None
    position_ids: torch.Tensor | None  # [B, L] or None (the model counts from 0)
    num_tokens: int  # real tokens (no padding)
    num_label_tokens: int  # tokens that count in the loss (after the shift)
    num_samples: int

    def to(self, device: torch.device) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return replace(
            self,
            input_ids=self.input_ids.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            attention_mask=move(self.attention_mask),
            position_ids=move(self.position_ids),
        )


class Layout(Protocol):
    """How samples become micro-batches."""

    name: str

    def plan(self, samples: Sequence[Sample], order: Sequence[int]) -> list[Plan]: ...

    def collate(self, samples: Sequence[Sample], plan: Plan) -> Batch: ...


class PaddedLayout:
    """One sample per row, right-padded to the longest row of the micro-batch."""

    name = "padded"

    def __init__(self, batch_size: int, pad_id: int) -> None:
        self.batch_size, self.pad_id = batch_size, pad_id

    def plan(self, samples: Sequence[Sample], order: Sequence[int]) -> list[Plan]:
        return [[[i] for i in order[s : s + self.batch_size]] for s in range(0, len(order), self.batch_size)]

    def collate(self, samples: Sequence[Sample], plan: Plan) -> Batch:
        rows = [samples[row[0]] for row in plan]
        width = max(len(s.input_ids) for s in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, s in enumerate(rows):
            n = len(s.input_ids)
            ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(s.input_ids), torch.tensor(s.labels), 1
        return _batch(ids, labels, mask, None, int(mask.sum()), len(rows))


class PackedLayout:
    """Samples back to back in rows of `pack_length` tokens, in epoch order (next-fit)."""

    def __init__(self, batch_size: int, pack_length: int, pad_id: int, mode: str = "position_ids") -> None:
        if mode not in ("position_ids", "mask"):
            raise ValueError(f"packing mode must be position_ids or mask, got {mode!r}")
        self.batch_size, self.pack_length, self.pad_id, self.mode = batch_size, pack_length, pad_id, mode
        self.name = f"packed/{mode}"

    def plan(self, samples: Sequence[Sample], order: Sequence[int]) -> list[Plan]:
        rows: list[list[int]] = []
        used = self.pack_length
        for i in order:
            n = len(samples[i].input_ids)
            if used + n > self.pack_length:
                rows.append([])
                used = 0
            rows[-1].append(i)
            used += n
        return [rows[s : s + self.batch_size] for s in range(0, len(rows), self.batch_size)]

    def collate(self, samples: Sequence[Sample], plan: Plan) -> Batch:
        length = self.pack_length
        ids = torch.full((len(plan), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(plan), length), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(plan), length), dtype=torch.long)
        seq_ids = torch.zeros((len(plan), length), dtype=torch.long)
        real = 0
        for r, row in enumerate(plan):
            at = 0
            for k, i in enumerate(row):
                s = samples[i]
                n = len(s.input_ids)
                ids[r, at : at + n] = torch.tensor(s.input_ids)
                labels[r, at : at + n] = torch.tensor(s.labels)
                labels[r, at] = IGNORE_INDEX  # never predicted from the previous sample's last token
                positions[r, at : at + n] = torch.arange(n)
                seq_ids[r, at : at + n] = k
                at += n
            positions[r, at:] = torch.arange(length - at)  # the padding tail is a segment of its own
            seq_ids[r, at:] = len(row)
            real += at
        mask = block_causal_mask(seq_ids) if self.mode == "mask" else None
        return _batch(ids, labels, mask, positions, real, sum(len(row) for row in plan))


def block_causal_mask(seq_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, 1, L, L] additive mask: token q sees token k iff same segment and k <= q."""
    same = seq_ids[:, :, None] == seq_ids[:, None, :]
    length = seq_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = (same & causal)[:, None]
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def _batch(
    ids: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    positions: torch.Tensor | None,
    real: int,
    samples: int,
) -> Batch:
    counted = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return Batch(ids, labels, mask, positions, real, counted, samples)


class BatchStream:
    """The endless, restartable sequence of micro-batches: epoch after epoch, shuffled per (seed, epoch)."""

    def __init__(self, samples: Sequence[Sample], layout: Layout, seed: int, shuffle: bool = True) -> None:
        self.samples, self.layout, self.seed, self.shuffle = samples, layout, seed, shuffle
        self._plans: tuple[int, list[Plan]] | None = None

    def epoch_plans(self, epoch: int) -> list[Plan]:
        if self._plans is None or self._plans[0] != epoch:
            order = list(range(len(self.samples)))
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._plans = (epoch, self.layout.plan(self.samples, order))
        return self._plans[1]

    def micro_batches_per_epoch(self) -> int:
        return len(self.epoch_plans(0))

    def iterate(self, start: int = 0) -> Iterator[tuple[float, Batch]]:
        """(fractional epoch, batch) from micro-batch index `start` on."""
        epoch, index = 0, start
        while index >= len(self.epoch_plans(epoch)):
            index -= len(self.epoch_plans(epoch))
            epoch += 1
        while True:
            plans = self.epoch_plans(epoch)
            for i in range(index, len(plans)):
                yield epoch + (i + 1) / len(plans), self.layout.collate(self.samples, plans[i])
            epoch, index = epoch + 1, 0


def loss_sum(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Summed next-token cross-entropy over the batch's label tokens (fp32), from one forward pass."""
    logits = forward_logits(model, batch)[:, :-1]
    targets = batch.labels[:, 1:]
    keep = targets != IGNORE_INDEX
    return F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")


def forward_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    if batch.position_ids is not None:
        kwargs["position_ids"] = batch.position_ids
    mask = batch.attention_mask
    if mask is not None and mask.dim() == 4:
        kwargs["attention_mask"] = mask.to(_param_dtype(model))
    return model(**kwargs).logits  # type: ignore[no-any-return]


def _param_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def choose_packing_mode(model: torch.nn.Module, device: torch.device, context: Autocast) -> str:
    """The first packing mode under which packed samples provably do not see each other on this model."""
    results = {}
    for mode in ("position_ids", "mask"):
        try:
            isolated, leak = packing_probe(model, device, context, mode)
        except (TypeError, ValueError, RuntimeError) as e:  # the model refuses these inputs
            results[mode] = f"failed ({type(e).__name__}: {e})"
            continue
        if isolated <= 0.02 * leak or isolated == leak == 0:
            return mode
        results[mode] = (
            f"a packed sample's logits moved by {isolated:.3g} (cross-attention moves them {leak:.3g})"
        )
    detail = "; ".join(f"{mode}: {why}" for mode, why in results.items())
    raise ModelError(
        f"packing would let samples attend to each other on this model ({detail}); set tunelab.packing: false"
    )


@torch.no_grad()
def packing_probe(
    model: torch.nn.Module, device: torch.device, context: Autocast, mode: str
) -> tuple[float, float]:
    """Max |logit change| of sample B when packed after sample A, (isolated, with cross-attention)."""
    vocab = model.get_input_embeddings().weight.shape[0]  # type: ignore[operator,union-attr]
    gen = torch.Generator().manual_seed(0)
    a, b = (
        torch.randint(vocab, (7,), generator=gen).tolist(),
        torch.randint(vocab, (5,), generator=gen).tolist(),
    )
    samples = [Sample(a, a, 0, ""), Sample(b, b, 0, "")]
    alone = PaddedLayout(1, 0).collate(samples, [[1]])
    packed = PackedLayout(1, len(a) + len(b), 0, mode).collate(samples, [[0, 1]])
    leaky = replace(packed, attention_mask=torch.ones_like(packed.input_ids))  # plain causal over the row
    was_training = model.training
    model.eval()
    try:
        with context():
            ref = forward_logits(model, alone.to(device))[0].float()
            iso = forward_logits(model, packed.to(device))[0, len(a) :].float()
            mixed = forward_logits(model, leaky.to(device))[0, len(a) :].float()
    finally:
        model.train(was_training)
    return float((iso - ref).abs().max()), float((mixed - ref).abs().max())
