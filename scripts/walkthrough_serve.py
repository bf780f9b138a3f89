"""The walkthrough's last step: base model + the job's adapter deployed through the gateway on the
embedded engine, called as the seed calls it (Triton generate, with curl) and as OpenAI clients do,
then the gateway's Prometheus metrics."""

from __future__ import annotations

import json
from typing import Any

import httpx

from walkthrough import DEPLOYMENT, MODEL, Walkthrough
from walkthrough_tools import BOLD, RESET, WalkthroughError, curl_command

KEY_NAME, KEY_VAR = "demo", "TUNELAB_API_KEY"  # the API key the requests below send, and its variable
METRICS = (
    "tunelab_gateway_requests_total",
    "tunelab_gateway_request_duration_seconds_count",
    "tunelab_gateway_generation_tokens_total",
)


def prompt() -> str:
    """An AdvertiseGen input of the sample's kind (content: key#value pairs)."""
    from tunelab.recipes.advertisegen_sample import generate

    return generate(1, seed=2024)[0]["content"]


def chatglm3(text: str) -> str:
    """``text`` as a user turn in ChatGLM3's chat format, for endpoints that take raw text (the
    tokenizer adds ChatGLM3's ``[gMASK]sop`` prefix itself). The newline after ``<|assistant|>`` is
    the empty metadata line ChatGLM3 writes before a plain answer, as the chat template puts it."""
    return f"<|user|>\n {text}<|assistant|>\n"


def serve(w: Walkthrough, adapter: str) -> dict[str, Any]:
    """Deploys ``MODEL`` with ``adapter`` (``output@N``), sends both requests, reads the metrics."""
    w.say(
        f"""
The seed serves the output with vLLM. The gateway speaks the same API over vLLM or, here, its
embedded engine (transformers + peft on CPU): the base model from the {MODEL} dataset, the LoRA
adapter from {adapter}, loaded by the gateway through the datasets service."""
    )
    if w.cli.ok("model", "get", DEPLOYMENT):
        w.say(f"{DEPLOYMENT} is deployed from an earlier run: removing it, to deploy this run's adapter")
        w.cli.run("model", "rm", DEPLOYMENT)
    w.cli.run("model", "deploy", DEPLOYMENT, "--base", MODEL, "--adapter", f"ad={adapter}")
    settings = {row["setting"]: row["value"] for row in w.cli.data("config", "show")}
    url = settings["gateway_url"]
    content = prompt()
    tokens = w.sizes.answer_tokens

    # An earlier run's key goes first: its secret was printed once, and is gone.
    removed = w.cli.ok("key", "rm", KEY_NAME)
    again = (
        f"\nThe key {KEY_NAME} of an earlier run was removed first: its secret was not kept."
        if removed
        else ""
    )
    w.say(
        f"""
Every generate route of the gateway needs an API key: create one. Its secret is printed once;
creating it takes the stack's own token, which the CLI found in the stack's data dir.{again}"""
    )
    w.echo(f"{BOLD}$ export {KEY_VAR}=$(tunelab key create {KEY_NAME}){RESET}")
    api_key = w.cli.stdout("key", "create", KEY_NAME)
    auth = {"authorization": f"Bearer {api_key}"}

    w.say(
        f"""
The seed's request: Triton's generate endpoint, as Triton serves it with its vLLM backend. It
takes raw text, so the prompt is written in ChatGLM3's chat format (`<|user|>`, a newline and a
space, the content, `<|assistant|>` and a newline; the tokenizer adds the `[gMASK]sop` prefix),
exactly the ids the chat template gives the OpenAI request below. Generation stops
at `</s>`, `<|user|>` or `<|observation|>`. max_tokens is {tokens} instead of the seed's 1024."""
    )
    generate_url = f"{url}/v2/models/{DEPLOYMENT}/generate"
    sampling = {"temperature": 0.7, "top_p": 0.95, "max_tokens": tokens}
    body = {"text_input": chatglm3(content), "stream": False, "sampling_parameters": json.dumps(sampling)}
    w.echo(f"{BOLD}$ {curl_command(generate_url, body, KEY_VAR)}{RESET}")
    generated = _post(generate_url, body, auth)
    w.echo(json.dumps(generated, ensure_ascii=False, indent=2))

    w.say("\nThe same deployment through the OpenAI API (the chat template is applied for you):")
    chat_url = f"{url}/v1/chat/completions"
    chat_body = {
        "model": DEPLOYMENT,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    w.echo(f"{BOLD}$ {curl_command(chat_url, chat_body, KEY_VAR)} -H 'content-type: application/json'{RESET}")
    chat = _post(chat_url, chat_body, auth)
    w.echo(f"answer: {chat['choices'][0]['message']['content']}")
    w.echo(f"usage:  {json.dumps(chat['usage'])}")

    metrics_url = f"{url}/metrics"
    text = httpx.get(metrics_url, timeout=30).text
    lines = [line for line in text.splitlines() if line.startswith(METRICS)]
    w.say(f"\nPrometheus metrics of the gateway at {metrics_url} (and of every service on its metrics port):")
    for line in lines:
        w.echo(f"  {line}")
    return {
        "gateway_url": url,
        "deployment": w.cli.data("model", "get", DEPLOYMENT),
        "prompt": content,
        "generate": generated,
        "chat": chat,
        "metrics": lines,
    }


def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    resp = httpx.post(url, json=body, headers=headers, timeout=300)
    if resp.status_code != 200:
        raise WalkthroughError(f"POST {url} answered {resp.status_code}: {resp.text[:500]}")
    return dict(resp.json())
