"""Serving ``/v1/completions`` and ``/v1/chat/completions`` (vLLM's ``serving_completion`` and
``serving_chat``).

A request becomes one batcher row per answer: each prompt ``n`` times, answer ``i`` to prompt ``p``
being choice ``p * n + i`` as vLLM numbers them. Every row is checked against the context before
any is submitted, so a refused prompt starts no work. The rows' answers are gathered into one
response, or streamed as chunks in the order the rows produce them; a client that leaves stops
every row of its request. Usage counts each prompt once and every answer's tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tunelab.engine.batcher import Batcher, Delta, Finish, GenRequest, Item, TokenLogprob
from tunelab.engine.limits import completion_budget
from tunelab.engine.logprobs import Entry, chat_logprobs, completion_logprobs, text_length
from tunelab.engine.model import ServedModel
from tunelab.engine.protocol import BadRequest, ChatRequest, CompletionRequest, error_body
from tunelab.engine.tokens import TokenText

OnFinish = Callable[[GenRequest, Finish], None]
Answer = tuple[str, list[TokenLogprob], Finish]  # a row's text, its tokens' logprobs, how it ended
Chunk = Callable[[GenRequest, Delta | Finish | None], dict[str, Any]]


class OpenAIServing:
    def __init__(
        self, model: ServedModel, batcher: Batcher, default_max_tokens: int, on_finish: OnFinish
    ) -> None:
        self.model, self.batcher = model, batcher
        self.default_max_tokens = default_max_tokens  # a completion's, when it has none (a chat: the context)
        self.on_finish = on_finish
        self.text = TokenText(model.tokenizer)
        self.vocab = _vocab_size(model)

    async def completion(self, req: CompletionRequest, request: Request) -> Response:
        req.check()
        prompts = [self._encode(p, req.add_special_tokens) for p in req.prompt]
        echo = [
            p if isinstance(p, str) else self.model.decode(ids)
            for p, ids in zip(req.prompt, prompts, strict=True)
        ]
        rows = self._submit(req, prompts, req.max_tokens, self.default_max_tokens)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": req.model}
        want_lp, as_ids = req.logprobs is not None, req.return_tokens_as_token_ids

        def prompt_part(row: GenRequest) -> tuple[str, list[Entry]]:
            if not req.echo:
                return "", []
            entries: list[Entry] = [(row.ids[0], None), *((s.token, s) for s in row.prompt_steps)]
            return echo[row.index // req.n], entries if want_lp else []

        if req.stream:
            offsets: dict[int, int] = {}

            def chunk(row: GenRequest, item: Delta | Finish | None) -> dict[str, Any]:
                if item is None:  # the row's first chunk: its echoed prompt
                    text, entries = prompt_part(row)
                elif isinstance(item, Delta):
                    text, entries = item.text, [(s.token, s) for s in item.logprobs]
                else:
                    text, entries = "", []
                offset = offsets.get(row.index, 0)
                lp = completion_logprobs(entries, self.text, offset, as_ids) if want_lp and entries else None
                offsets[row.index] = offset + text_length(entries, self.text)
                reason = item.reason if isinstance(item, Finish) else None
                choice = {"index": row.index, "text": text, "logprobs": lp, "finish_reason": reason}
                return {**head, "choices": [choice]}

            first = chunk if req.echo else None
            return _sse(self._stream(rows, head, chunk, first, req.n if req.include_usage else 0))
        answers = await self._gather(request, rows)
        choices = []
        for row in rows:
            text, steps, fin = answers[row.index]
            prompt, entries = prompt_part(row)
            entries += [(s.token, s) for s in steps]
            lp = completion_logprobs(entries, self.text, 0, as_ids) if want_lp else None
            choice = {"index": row.index, "text": prompt + text, "logprobs": lp, "finish_reason": fin.reason}
            choices.append(choice)
        return JSONResponse({**head, "choices": choices, "usage": _usage(rows, req.n, answers)})

    async def chat(self, req: ChatRequest, request: Request) -> Response:
        req.check()
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        prompt = self.model.encode_chat(messages, req.add_special_tokens)
        rows = self._submit(req, [prompt], req.max_tokens or req.max_completion_tokens, None)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        want_lp = req.logprobs

        def lp_of(steps: list[TokenLogprob]) -> dict[str, Any] | None:
            return chat_logprobs(steps, self.text, req.return_tokens_as_token_ids) if want_lp else None

        if req.stream:
            head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model}

            def chunk(row: GenRequest, item: Delta | Finish | None) -> dict[str, Any]:
                if item is None:  # the row's first chunk, as vLLM sends it
                    choice = {"index": row.index, "delta": {"role": "assistant", "content": ""}}
                    return {**head, "choices": [{**choice, "logprobs": None, "finish_reason": None}]}
                if isinstance(item, Delta):
                    delta, lp, reason = {"content": item.text}, lp_of(item.logprobs), None
                else:
                    delta, lp, reason = {}, None, item.reason
                choice = {"index": row.index, "delta": delta, "logprobs": lp, "finish_reason": reason}
                return {**head, "choices": [choice]}

            return _sse(self._stream(rows, head, chunk, chunk, req.n if req.include_usage else 0))
        answers = await self._gather(request, rows)
        choices = []
        for row in rows:
            text, steps, fin = answers[row.index]
            message = {"role": "assistant", "content": text}
            lp = lp_of(steps)
            choices.append(
                {"index": row.index, "message": message, "logprobs": lp, "finish_reason": fin.reason}
            )
        head = {"id": rid, "object": "chat.completion", "created": created, "model": req.model}
        return JSONResponse({**head, "choices": choices, "usage": _usage(rows, req.n, answers)})

    def _encode(self, prompt: str | list[int], add_special_tokens: bool) -> list[int]:
        ids = self.model.encode(prompt, add_special_tokens)
        if not ids:
            raise BadRequest("prompt: empty (it has no tokens)", "prompt")
        if bad := [t for t in ids if t >= self.vocab]:
            raise BadRequest(
                f"prompt: token id {bad[0]} is outside the model's vocabulary (0 to {self.vocab - 1})",
                "prompt",
            )
        return ids

    def _submit(
        self,
        req: CompletionRequest | ChatRequest,
        prompts: list[list[int]],
        max_tokens: int | None,
        default: int | None,
    ) -> list[GenRequest]:
        adapter = self.model.adapter_of(req.model)
        context = self.model.max_model_len
        budgets = [completion_budget(context, len(ids), max_tokens, default) for ids in prompts]
        if isinstance(req, CompletionRequest):
            want_lp, top, echo_lp = req.logprobs is not None, req.logprobs or 0, req.echo
        else:
            want_lp, top, echo_lp = req.logprobs, req.top_logprobs or 0, False
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[Item] = asyncio.Queue()
        rows = [
            GenRequest(
                ids=ids,
                adapter=adapter,
                max_tokens=budget,
                sampling=req.sampling(i),
                stop=req.stops(),
                loop=loop,
                out=out,
                index=p * req.n + i,
                want_logprobs=want_lp,
                top_logprobs=top,
                prompt_logprobs=want_lp and echo_lp,
            )
            for p, (ids, budget) in enumerate(zip(prompts, budgets, strict=True))
            for i in range(req.n)
        ]
        for row in rows:
            self.batcher.submit(row)
        return rows

    async def _gather(self, request: Request, rows: list[GenRequest]) -> dict[int, Answer]:
        """Every row's answer. The rows stop when the client leaves."""
        by_index = {row.index: row for row in rows}
        texts: dict[int, list[str]] = {row.index: [] for row in rows}
        steps: dict[int, list[TokenLogprob]] = {row.index: [] for row in rows}
        done: dict[int, Finish] = {}
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            while len(done) < len(rows):
                get = asyncio.ensure_future(rows[0].out.get())
                await asyncio.wait((get, gone), return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    raise asyncio.CancelledError
                item = _item(get.result())
                if isinstance(item, Finish):
                    done[item.index] = item
                    self.on_finish(by_index[item.index], item)
                else:
                    texts[item.index].append(item.text)
                    steps[item.index].extend(item.logprobs)
        finally:
            gone.cancel()
            for row in rows:
                row.cancelled = True  # no-op for finished rows
        return {i: ("".join(texts[i]), steps[i], done[i]) for i in done}

    async def _stream(
        self,
        rows: list[GenRequest],
        head: dict[str, Any],
        chunk: Chunk,
        first: Chunk | None,
        usage_n: int,
    ) -> AsyncIterator[bytes]:
        """The rows' chunks as they come (``first(row, None)`` before a row's own), then the usage
        (``usage_n``: the request's n; 0: not asked for) and [DONE]."""
        by_index = {row.index: row for row in rows}
        started: set[int] = set()
        done: dict[int, Finish] = {}
        try:
            while len(done) < len(rows):
                try:
                    item = _item(await rows[0].out.get())
                except Exception as exc:  # noqa: BLE001  (the batch failed: said in the stream)
                    yield _event({"error": error_body(str(exc), 500)["error"]})
                    yield b"data: [DONE]\n\n"
                    return
                row = by_index[item.index]
                if first is not None and row.index not in started:
                    started.add(row.index)
                    yield _event(first(row, None))
                if isinstance(item, Finish):
                    done[item.index] = item
                    self.on_finish(row, item)
                yield _event(chunk(row, item))
            if usage_n:
                yield _event({**head, "choices": [], "usage": _usage(rows, usage_n, done)})
            yield b"data: [DONE]\n\n"
        finally:
            for row in rows:
                row.cancelled = True  # no-op for finished rows; stops the rest when the client left


def _vocab_size(model: ServedModel) -> int:
    """How many token ids the model embeds (a prompt's ids must be below it): its embedding's rows,
    or where remote code does not say (no ``get_input_embeddings``), its config's vocabulary."""
    try:
        return int(model.model.get_input_embeddings().weight.shape[0])
    except (AttributeError, NotImplementedError):
        config = model.model.config
        size = getattr(config, "padded_vocab_size", None) or getattr(config, "vocab_size", None)
        return int(size or len(model.tokenizer))


def _item(item: Item) -> Delta | Finish:
    if isinstance(item, BaseException):
        raise item
    return item


def _usage(rows: list[GenRequest], n: int, answers: dict[int, Answer] | dict[int, Finish]) -> dict[str, int]:
    prompt = sum(len(row.ids) for row in rows if row.index % n == 0)  # each prompt once
    finished = [a if isinstance(a, Finish) else a[2] for a in answers.values()]
    completion = sum(f.completion_tokens for f in finished)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _sse(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})
