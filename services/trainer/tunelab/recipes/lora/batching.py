"""Batches: padded (like ChatGLM3's recipe) or packed rows with no attention across samples.

A `Layout` plans which samples go into which row of which micro-batch, and turns a plan into
tensors. The order of an epoch depends only on (seed, epoch), so the stream of micro-batches can be
restarted at any index: resuming needs no dataloader state.

Packed rows hold several samples back to back, padded to a fixed `pack_length`; position ids restart
at 0 for every sample, and a sample never attends to another one. Three ways to enforce that
(`attention.choose_packing_mode` proves the chosen one on the real model before training):
- "varlen": the rows of a micro-batch become one row plus `cu_seqlens`, the offsets where samples
  start; the `tunelab_varlen` attention (attention.py) runs each sample on its own, without a mask;
- "position_ids": no attention mask; the model derives per-sample attention from the restarting
  position ids (transformers does this for its own models with block-diagonal masks);
- "mask": an explicit 4D block-diagonal causal mask, for models that only honour masks.

Every batch also carries where its loss is: `loss_index` (flat positions whose next token is
trained) and `loss_targets`, computed here on the host so the loss needs no device sync.
"""

from __future__ import annotations

import contextlib
import queue
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from tunelab.recipes.lora.data import IGNORE_INDEX, Sample

Plan = list[list[int]]  # rows of sample indices for one micro-batch
Autocast = Callable[[], contextlib.AbstractContextManager[Any]]  # mixed-precision context for forwards
PACKING_MODES = ("varlen", "position_ids", "mask")


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, L]
    labels: torch.Tensor  # [B, L], IGNORE_INDEX where no loss
    attention_mask: torch.Tensor | None  # [B, L] padding mask, [B, 1, L, L] additive mask, or None
    position_ids: torch.Tensor | None  # [B, L] or None (the model counts from 0)
    num_tokens: int  # real tokens (no padding)
    num_label_tokens: int  # tokens that count in the loss (after the shift)
    num_samples: int
    loss_index: torch.Tensor  # [num_label_tokens] flat index (row * L + position) of predicting tokens
    loss_targets: torch.Tensor  # [num_label_tokens] the token each of them must predict
    cu_seqlens: torch.Tensor | None = None  # varlen: int32 [segments + 1] offsets into the single row
    max_seqlen: int = 0  # varlen: an upper bound of the segments' lengths

    def to(self, device: torch.device) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return replace(
            self,
            input_ids=self.input_ids.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            attention_mask=move(self.attention_mask),
            position_ids=move(self.position_ids),
            loss_index=self.loss_index.to(device, non_blocking=True),
            loss_targets=self.loss_targets.to(device, non_blocking=True),
            cu_seqlens=move(self.cu_seqlens),
        )

    def pin_memory(self) -> Batch:
        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()

        return replace(
            self,
            input_ids=self.input_ids.pin_memory(),
            labels=self.labels.pin_memory(),
            attention_mask=pin(self.attention_mask),
            position_ids=pin(self.position_ids),
            loss_index=self.loss_index.pin_memory(),
            loss_targets=self.loss_targets.pin_memory(),
            cu_seqlens=pin(self.cu_seqlens),
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
    """Samples back to back in rows of `pack_length` tokens, in epoch order (next-fit).

    `segment_cap` (varlen): the padding tail of a row is split into segments of at most this many
    tokens, so `max_seqlen` is a constant (the longest sample) and compiled code sees one shape.
    """

    def __init__(
        self,
        batch_size: int,
        pack_length: int,
        pad_id: int,
        mode: str = "position_ids",
        segment_cap: int | None = None,
    ) -> None:
        if mode not in PACKING_MODES:
            raise ValueError(f"packing mode must be one of {', '.join(PACKING_MODES)}, got {mode!r}")
        self.batch_size, self.pack_length, self.pad_id, self.mode = batch_size, pack_length, pad_id, mode
        self.segment_cap = segment_cap or pack_length
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
        length, cap = self.pack_length, self.segment_cap
        ids = torch.full((len(plan), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(plan), length), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(plan), length), dtype=torch.long)
        seq_ids = torch.zeros((len(plan), length), dtype=torch.long)
        starts: list[int] = []  # varlen: where every segment starts in the flattened row
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
                starts.append(r * length + at)
                at += n
            tail = torch.arange(length - at)
            positions[r, at:] = tail % cap  # the padding tail: segments of its own, at most `cap` long
            seq_ids[r, at:] = len(row) + tail // cap
            starts += [r * length + t for t in range(at, length, cap)]
            real += at
        samples_in = sum(len(row) for row in plan)
        if self.mode == "varlen":
            flat = ids.reshape(1, -1), labels.reshape(1, -1), positions.reshape(1, -1)
            batch = _batch(*flat[:2], None, flat[2], real, samples_in)
            cu = torch.tensor([*starts, len(plan) * length], dtype=torch.int32)
            return replace(batch, cu_seqlens=cu, max_seqlen=cap)
        mask = block_causal_mask(seq_ids) if self.mode == "mask" else None
        return _batch(ids, labels, mask, positions, real, samples_in)


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
    trained = (labels[:, 1:] != IGNORE_INDEX).nonzero()  # (row, position) predicting a trained token
    index = trained[:, 0] * labels.shape[1] + trained[:, 1]
    targets = labels[trained[:, 0], trained[:, 1] + 1]
    return Batch(ids, labels, mask, positions, real, len(index), samples, index, targets)


def epoch_order(count: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The sample order of one epoch: a function of (seed, epoch) only."""
    order = list(range(count))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


class BatchStream:
    """The endless, restartable sequence of micro-batches: epoch after epoch, shuffled per (seed, epoch)."""

    def __init__(self, samples: Sequence[Sample], layout: Layout, seed: int, shuffle: bool = True) -> None:
        self.samples, self.layout, self.seed, self.shuffle = samples, layout, seed, shuffle
        self._plans: tuple[int, list[Plan]] | None = None

    def epoch_plans(self, epoch: int) -> list[Plan]:
        if self._plans is None or self._plans[0] != epoch:
            order = epoch_order(len(self.samples), self.seed, epoch, self.shuffle)
            self._plans = (epoch, self.layout.plan(self.samples, order))
        return self._plans[1]

    def micro_batches_per_epoch(self) -> int:
        return len(self.epoch_plans(0))

    def iterate(self, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[tuple[float, Batch]]:
        """(fractional epoch, batch) from micro-batch index `start` on.

        Data-parallel (`world` processes): one rank's share of the same stream, every `world`-th
        micro-batch from `rank` on; its i-th micro-batch is the stream's `i * world + rank`, so the
        ranks' shares of any `world * k` consecutive ones are disjoint and make up all of them.
        Only this rank's micro-batches are collated.
        """
        epoch, index = 0, start * world + rank
        while True:
            plans = self.epoch_plans(epoch)
            if index >= len(plans):
                epoch, index = epoch + 1, index - len(plans)
                continue
            yield epoch + (index + 1) / len(plans), self.layout.collate(self.samples, plans[index])
            index += world


class Prefetcher:
    """Collates the next micro-batches on a background thread (pinned for a GPU), so the GPU never waits.

    Iterate it like the stream it wraps; `close()` stops the thread (the recipe calls it when training
    ends). An exception in the thread is raised in the consumer.
    """

    def __init__(self, items: Iterator[tuple[float, Batch]], depth: int = 2, pin: bool = False) -> None:
        self._items, self._pin = items, pin
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="tunelab-batches", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            for epoch, batch in self._items:
                item: Any = (epoch, batch.pin_memory() if self._pin else batch)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._queue.put(e)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> tuple[float, Batch]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
