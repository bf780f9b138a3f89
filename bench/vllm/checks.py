"""The functional checks through the gateway, in ChatGLM3's chat format, and reading Prometheus text.

The served model is an imported ChatGLM3 (transformers' glm, ChatGLM3's tokenizer and template). A raw
prompt (Triton's ``text_input``, OpenAI completions) is ChatGLM3's turn text, to which the tokenizer adds
``[gMASK] sop``: ``<|user|>\n {content}<|assistant|>\n`` (the newline after ``<|assistant|>`` is the empty
metadata line ChatGLM3 writes before a plain answer, as the imported chat template's generation prompt
has it); an OpenAI chat request sends messages and the server applies the template. Generation stops at
``</s>``, ``<|user|>`` and ``<|observation|>`` (generation_config.json's ids), so no answer may contain
those strings: the last check reads every answer the others got.

Each check records its outcome (``ok``, the HTTP status, a snippet of the answer, seconds) rather than
stopping the run, so one result file shows everything that worked and everything that did not.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

# The seed walkthrough's request (`curl -X POST …/v2/models/chatglm3-ad/generate -d '…'`), whose
# text_input is the ad's attributes, in ChatGLM3's turn format.
SEED_PROMPT = "类型#上衣*材质#牛仔布*颜色#白色*风格#简约*图案#刺绣*衣样式#外套*衣款式#破洞"
SEED_SAMPLING = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 1024}
STOP_STRINGS = ("</s>", "<|user|>", "<|observation|>")  # ChatGLM3's stops: never in an answer


def chatglm3_prompt(content: str) -> str:
    """One user turn and the assistant's generation prompt, as raw text (the tokenizer adds [gMASK] sop)."""
    return f"<|user|>\n {content}<|assistant|>\n"


def _snippet(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[:n] + "…"


def _timed(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.monotonic()
    try:
        out = fn()
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    out["seconds"] = round(time.monotonic() - started, 2)
    return {"check": name, **out}


def sse_events(resp: httpx.Response) -> list[str]:
    return [line[5:].strip() for line in resp.iter_lines() if line.startswith("data:")]


def models(client: httpx.Client, want: list[str]) -> dict[str, Any]:
    r = client.get("/v1/models")
    ids = [m["id"] for m in r.json().get("data", [])] if r.status_code == 200 else []
    return {"ok": r.status_code == 200 and set(want) <= set(ids), "status": r.status_code, "models": ids}


def upstream_has_adapter(upstream_url: str, base: str, adapter: str) -> dict[str, Any]:
    """The upstream itself lists the adapter (loaded by the gateway at deploy time) under the base."""
    r = httpx.get(f"{upstream_url}/v1/models", timeout=30)
    cards = {m["id"]: m for m in r.json().get("data", [])} if r.status_code == 200 else {}
    ok = base in cards and adapter in cards and cards[adapter].get("parent") == base
    return {"ok": ok, "status": r.status_code, "models": sorted(cards)}


def triton_generate(client: httpx.Client, model: str, max_tokens: int) -> dict[str, Any]:
    sampling = {**SEED_SAMPLING, "max_tokens": max_tokens}
    prompt = chatglm3_prompt(SEED_PROMPT)
    body = {"text_input": prompt, "stream": False, "sampling_parameters": json.dumps(sampling)}
    r = client.post(f"/v2/models/{model}/generate", json=body)
    data = r.json()
    text = data.get("text_output", "")
    ok = r.status_code == 200 and data.get("model_name") == model and text.startswith(prompt)
    answer = text[len(prompt) :] if text.startswith(prompt) else text
    return {
        "ok": ok,
        "status": r.status_code,
        "model_name": data.get("model_name"),
        "chars": len(answer),
        "snippet": _snippet(answer),
        "answer": answer,
        "error": "" if ok else json.dumps(data, ensure_ascii=False)[:300],
    }


def triton_generate_stream(client: httpx.Client, model: str, max_tokens: int) -> dict[str, Any]:
    sampling = {**SEED_SAMPLING, "max_tokens": max_tokens}
    body = {
        "text_input": chatglm3_prompt(SEED_PROMPT),
        "stream": True,
        "exclude_input_in_output": True,
        "sampling_parameters": json.dumps(sampling),
    }
    with client.stream("POST", f"/v2/models/{model}/generate_stream", json=body) as r:
        events = [json.loads(e) for e in sse_events(r)] if r.status_code == 200 else []
        status = r.status_code
    errors = [e["error"] for e in events if "error" in e]
    text = "".join(e.get("text_output", "") for e in events)
    return {
        "ok": status == 200 and len(events) > 1 and not errors,
        "status": status,
        "events": len(events),
        "snippet": _snippet(text),
        "answer": text,
        "error": errors[0] if errors else "",
    }


def chat_stream(client: httpx.Client, model: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": SEED_PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": True,
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        events = sse_events(r) if r.status_code == 200 else []
        status = r.status_code
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    text = "".join(
        (c["choices"][0].get("delta") or {}).get("content") or "" for c in chunks if c.get("choices")
    )
    names = {c.get("model") for c in chunks}
    return {
        "ok": status == 200 and bool(events) and events[-1] == "[DONE]" and names == {model},
        "status": status,
        "chunks": len(chunks),
        "model_in_chunks": sorted(n for n in names if n),
        "snippet": _snippet(text),
        "answer": text,
    }


def adapter_changes_output(client: httpx.Client, base: str, adapter: str) -> dict[str, Any]:
    """Greedy completions of the same prompt from the base model and from the adapter differ."""
    texts = {}
    for model in (base, adapter):
        body = {"model": model, "prompt": chatglm3_prompt(SEED_PROMPT), "max_tokens": 24, "temperature": 0}
        r = client.post("/v1/completions", json=body)
        r.raise_for_status()
        texts[model] = r.json()["choices"][0]["text"]
    return {
        "ok": texts[base] != texts[adapter],
        "status": 200,
        "base": _snippet(texts[base], 60),
        "adapter": _snippet(texts[adapter], 60),
        "answers": [texts[base], texts[adapter]],
    }


def no_stop_strings(results: list[dict[str, Any]]) -> dict[str, Any]:
    """No answer of the other checks contains ChatGLM3's stop or role strings (removes the answers)."""
    answers = 0
    found: list[str] = []
    for r in results:
        texts = r.pop("answers", []) + ([r.pop("answer")] if "answer" in r else [])
        answers += len(texts)
        found += [f"{s!r} in {r['check']}" for text in texts for s in STOP_STRINGS if s in text]
    return {"ok": answers > 0 and not found, "answers": answers, "error": "; ".join(found)}


def run_all(
    gateway_url: str, upstream_url: str, base: str, adapter: str, max_tokens: int
) -> list[dict[str, Any]]:
    """Every check (through the gateway but the first); the generating ones run side by side."""
    with httpx.Client(base_url=gateway_url, timeout=httpx.Timeout(30, read=600)) as client:
        results = [
            _timed(
                "the upstream lists the adapter the gateway loaded",
                lambda: upstream_has_adapter(upstream_url, base, adapter),
            ),
            _timed("gateway /v1/models lists base and adapter", lambda: models(client, [base, adapter])),
        ]
        jobs: dict[str, Callable[[], dict[str, Any]]] = {
            f"triton /v2/models/{adapter}/generate (the seed's request)": lambda: triton_generate(
                client, adapter, max_tokens
            ),
            f"triton /v2/models/{adapter}/generate_stream": lambda: triton_generate_stream(
                client, adapter, max_tokens
            ),
            f"openai streaming chat to {adapter}": lambda: chat_stream(client, adapter, 64),
            "adapter changes the greedy output": lambda: adapter_changes_output(client, base, adapter),
        }
        pool = ThreadPoolExecutor(len(jobs))
        try:
            futures = [pool.submit(_timed, name, fn) for name, fn in jobs.items()]
            results += [f.result() for f in futures]
        finally:  # on a signal, return at once: stopping the servers ends the requests in flight
            pool.shutdown(wait=False, cancel_futures=True)
        results.append(
            _timed(
                f"no answer contains {', '.join(STOP_STRINGS)} (generation stops there)",
                lambda: no_stop_strings(results),
            )
        )
    return results


# -- Prometheus text ---------------------------------------------------------------------------------
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def samples(text: str) -> list[tuple[str, str, float]]:
    """(name, labels, value) of every sample line."""
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            try:
                out.append((m.group(1), m.group(2) or "", float(m.group(3))))
            except ValueError:
                continue
    return out


def histogram_totals(text: str, histograms: tuple[str, ...]) -> dict[str, float]:
    """``<h>_sum`` and ``<h>_count`` of each named histogram, summed over its label sets."""
    wanted = {f"{h}{suffix}" for h in histograms for suffix in ("_sum", "_count")}
    out: dict[str, float] = {}
    for name, _, value in samples(text):
        if name in wanted:
            out[name] = out.get(name, 0.0) + value
    return out


def gateway_metrics(text: str) -> dict[str, Any]:
    rows = samples(text)
    requests = {labels: value for name, labels, value in rows if name == "tunelab_gateway_requests_total"}
    gpu: dict[str, float] = {}
    gpu_labels = ""
    for name, labels, value in rows:
        if name.startswith("tunelab_gpu_"):
            gpu[name] = value
            gpu_labels = labels
    routes = sorted({m.group(1) for labels in requests for m in [re.search(r'route="([^"]+)"', labels)] if m})
    return {
        "request_series": len(requests),
        "requests_total": sum(requests.values()),
        "routes": routes,
        "ttft_histogram": any(
            n.startswith("tunelab_gateway_time_to_first_token_seconds") for n, _, _ in rows
        ),
        "gpu_series": len(gpu),
        "gpu_values": gpu,
        "gpu_labels": gpu_labels,
    }


def upstream_metrics(text: str, prefix: str) -> dict[str, Any]:
    rows = samples(text)
    names = {name for name, _, _ in rows if name.startswith(prefix)}
    gen = sum(
        v for n, _, v in rows if n in (f"{prefix}generation_tokens_total", f"{prefix}generation_tokens")
    )
    return {"prefix": prefix, "series": len(names), "samples": len(rows), "generation_tokens": gen}
