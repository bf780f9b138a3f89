"""Batching: requests that arrive together are generated together.

A worker thread takes the first waiting request, waits ``batch_wait_s`` for others (up to
``max_batch_size``), left-pads them into one batch and runs one ``generate``. Each row keeps its
own adapter, sampling, stop strings and max_tokens. Rows of different adapters share the batch
through peft's ``adapter_names`` where the model allows it (``ServedModel.can_mix``); otherwise
each adapter's rows run as a batch of their own, one after the other. A stopping criterion
called after every step hands each row's new token to its request (as text deltas, on the
request's asyncio queue) and ends rows that are finished, cancelled or at their limit. This is
static batching: a request that arrives mid-batch waits for the next one (vLLM's continuous
batching would let it join at the next step).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from tunelab.engine.model import ServedModel
from tunelab.engine.sampling import RowSampler, Sampling

log = logging.getLogger(__name__)


@dataclass
class Delta:
    text: str
    logprob: float | None = None


@dataclass
class Finish:
    reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class GenRequest:
    ids: list[int]
    adapter: str
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Delta | Finish | BaseException] = field(default_factory=asyncio.Queue)
    want_logprobs: bool = False
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None
    logprob: float | None = None
    closed: bool = False  # its Finish is sent

    def emit(self, item: Delta | Finish | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)

    def close(self) -> None:
        self.closed = True
        self.emit(Finish(self.finish or "length", len(self.ids), len(self.generated)))


class _Sampler(LogitsProcessor):
    def __init__(self, rows: list[GenRequest]) -> None:
        self.rows = rows
        self.sampler = RowSampler([r.sampling for r in rows])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, float("-inf"))
        for i, r in enumerate(self.rows):
            logits = scores[i].float()
            token = self.sampler.pick(i, r.sampling, logits)
            if r.want_logprobs:
                r.logprob = float(torch.log_softmax(logits, dim=-1)[token])
            out[i, token] = 0.0
        return out  # type: ignore[return-value]


class _Rows(StoppingCriteria):
    """Hands every row its new token and says which rows are done."""

    def __init__(self, rows: list[GenRequest], model: ServedModel) -> None:
        self.rows, self.model, self.stop_ids = rows, model, model.stop_ids

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        for r, token in zip(self.rows, last, strict=True):
            if r.finish is None:
                self.step(r, token)
        return torch.tensor([r.finish is not None for r in self.rows], device=input_ids.device)  # type: ignore[return-value]

    def step(self, r: GenRequest, token: int) -> None:
        if r.cancelled:
            r.finish = "abort"
            return
        if token in self.stop_ids:  # never shown: it ends the text
            r.finish = "stop"
            return
        r.generated.append(token)
        full = self.model.decode(r.generated)
        cut = min((i for s in r.stop if (i := full.find(s, max(0, len(r.text) - len(s)))) >= 0), default=-1)
        if cut >= 0:
            full, r.finish = full[:cut], "stop"
        elif len(r.generated) >= r.max_tokens:
            r.finish = "length"
        elif full.endswith("\ufffd"):
            return  # half a character: wait for the rest
        if len(full) > len(r.text) or r.want_logprobs:
            r.emit(Delta(full[len(r.text) :], r.logprob))
            r.text = full


class Batcher:
    def __init__(self, model: ServedModel, max_batch_size: int = 8, batch_wait_s: float = 0.005) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self._queue: queue.Queue[GenRequest | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="engine-batcher", daemon=True)
        self.running = 0  # requests in the batch being generated
        self.batches = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def submit(self, req: GenRequest) -> None:
        self._queue.put(req)

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            batch = [r for r in batch if not r.cancelled]
            if batch:
                self._generate(batch)

    def _generate(self, rows: list[GenRequest]) -> None:
        self.running, self.batches = len(rows), self.batches + 1
        try:
            self._forward(rows)
        except Exception as exc:
            log.exception("generation failed")
            for r in rows:
                if not r.closed:
                    r.emit(exc)
        finally:
            self.running = 0

    def _forward(self, rows: list[GenRequest]) -> None:
        adapters = list(dict.fromkeys(r.adapter for r in rows))  # in order of arrival
        with self.model.lock, torch.inference_mode():
            if len(adapters) == 1:
                with self.model.using(adapters[0]):
                    self._batch(rows)
                return
            if self.model.can_mix(set(adapters)):
                try:
                    with self.model.mixing():
                        self._batch(rows, adapter_names=[r.adapter for r in rows])
                    return
                except Exception:
                    if any(r.generated or r.finish for r in rows):
                        raise  # rows have answered already: a retry would repeat them
                    log.warning("a mixed-adapter batch failed; these adapters now run apart", exc_info=True)
                    self.model.mixable -= set(adapters)
            for adapter in adapters:
                with self.model.using(adapter):
                    self._batch([r for r in rows if r.adapter == adapter])

    def _batch(self, rows: list[GenRequest], **extra: Any) -> None:
        """One ``generate`` over ``rows``, left-padded. Caller holds the lock in inference mode."""
        tok = self.model.tokenizer
        width = max(len(r.ids) for r in rows)
        pad = tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r.ids)) + r.ids for r in rows], device=self.model.device)
        mask = torch.tensor(
            [[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in rows], device=self.model.device
        )
        self.model.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max(r.max_tokens for r in rows),
            do_sample=False,
            logits_processor=LogitsProcessorList([_Sampler(rows)]),
            stopping_criteria=StoppingCriteriaList([_Rows(rows, self.model)]),
            pad_token_id=pad,
            **extra,
        )
        for r in rows:
            r.close()
