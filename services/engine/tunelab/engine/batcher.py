"""Batching: requests that arrive together are generated together.

A worker thread takes the first waiting request, waits ``batch_wait_s`` for others (up to
``max_batch_size``), left-pads them into one batch and runs one ``generate``. Each row keeps its
own adapter, sampling, stop strings and max_tokens. Rows of different adapters share the batch
through peft's ``adapter_names`` where the model allows it (``ServedModel.can_mix``); otherwise
each adapter's rows run as a batch of their own, one after the other. A stopping criterion
called after every step hands each row's new token to its request (as text deltas, on the
request's asyncio queue) and ends rows that are finished, cancelled or at their limit. Rows that
ask for logprobs get, with each token, its logprob and the most likely alternatives (from the
model's distribution before sampling, as vLLM's default ``raw_logprobs``); rows that echo their
prompt with logprobs get the prompt's too, from one forward pass before generation. This is
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


@dataclass(frozen=True)
class TokenLogprob:
    """One token of a row with its logprob, and the ``top`` most likely tokens at its step."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Delta:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)  # the tokens behind ``text``, if asked
    index: int = 0


@dataclass
class Finish:
    reason: str
    prompt_tokens: int
    completion_tokens: int
    index: int = 0


Item = Delta | Finish | BaseException


@dataclass
class GenRequest:
    """One row: a prompt and one answer to it. The rows of one HTTP request (several prompts, ``n``
    answers each) share ``out``; ``index`` tells their items apart."""

    ids: list[int]
    adapter: str
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    index: int = 0
    want_logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token, with want_logprobs
    prompt_logprobs: bool = False  # the prompt's logprobs too, in ``prompt_steps`` before any item
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None
    pending: list[TokenLogprob] = field(default_factory=list)  # sampled, not yet handed over
    prompt_steps: list[TokenLogprob] = field(default_factory=list)  # the prompt's tokens after the first
    closed: bool = False  # its Finish is sent

    def emit(self, item: Item) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)

    def close(self) -> None:
        self.closed = True
        self.emit(Finish(self.finish or "length", len(self.ids), len(self.generated), self.index))


def step_logprobs(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """``token``'s logprob under ``logits`` (one row), with the ``top`` most likely tokens."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        values, ids = torch.topk(logprobs, min(top, logprobs.numel()))
        best = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(logprobs[token]), best)


class _Sampler(LogitsProcessor):
    def __init__(self, rows: list[GenRequest]) -> None:
        self.rows = rows
        self.sampler = RowSampler([r.sampling for r in rows])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, float("-inf"))
        for i, r in enumerate(self.rows):
            logits = scores[i].float()
            token = self.sampler.pick(i, r.sampling, logits)
            if r.want_logprobs and r.finish is None:
                r.pending.append(step_logprobs(logits, token, r.top_logprobs))
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
            if r.pending:
                r.pending.pop()  # the stop token's, not part of the answer
                self.hand_over(r, r.text)  # tokens that waited for the rest of a character
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
        self.hand_over(r, full)

    @staticmethod
    def hand_over(r: GenRequest, full: str) -> None:
        """Sends the row's new text (``full`` past what it sent) with the tokens sampled for it."""
        if len(full) > len(r.text) or r.pending:
            r.emit(Delta(full[len(r.text) :], r.pending, r.index))
            r.pending = []
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
        for r in rows:
            if r.prompt_logprobs and not r.cancelled:
                r.prompt_steps = self._prompt_logprobs(r, "adapter_names" in extra)
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

    def _prompt_logprobs(self, r: GenRequest, mixed: bool) -> list[TokenLogprob]:
        """The logprob of each prompt token after the first given the ones before it: a forward pass
        over the row alone (unpadded, so positions are the prompt's own)."""
        ids = torch.tensor([r.ids], device=self.model.device)
        extra = {"adapter_names": [r.adapter]} if mixed else {}
        logits = self.model.model(input_ids=ids, **extra).logits[0]
        return [step_logprobs(logits[pos - 1], r.ids[pos], r.top_logprobs) for pos in range(1, len(r.ids))]
