"""``python -m tunelab.engine --model DIR [--served-model-name NAME] [--lora-modules NAME=DIR ...]``

Flags follow ``vllm serve`` where they overlap, so the gateway starts both the same way. The API key
comes from the environment, ``TUNELAB_ENGINE_API_KEY`` (as vLLM's from ``VLLM_API_KEY``): with it,
every route but ``/health`` requires ``Authorization: Bearer <key>``. Adapters loaded at runtime
(``/v1/load_lora_adapter``) must lie under an ``--adapter-root``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tunelab.engine", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", required=True, help="a Hugging Face model directory (or hub id where reachable)"
    )
    p.add_argument("--served-model-name", default="", help="the name clients call the base model by")
    p.add_argument("--lora-modules", nargs="*", default=[], metavar="NAME=DIR", help="LoRA adapters to load")
    p.add_argument(
        "--adapter-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory /v1/load_lora_adapter may load adapters from (repeatable; none: no runtime "
        "loading); paths are checked after resolving symlinks",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests"
    )
    p.add_argument(
        "--default-max-tokens", type=int, default=16, help="a completion's max_tokens when it has none"
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="prompt plus completion, in tokens (default: the model's context, from its config)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=8 * 1024 * 1024,
        help="largest request body read; larger ones are answered 413 (default 8 MiB: above the "
        "gateway's 4 MiB, as the gateway adds fields to the bodies it passes on)",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run Python code shipped in the model directory (auto_map in config.json); off by default, "
        "only for model repositories you trust",
    )
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def one_line(exc: BaseException, written_for_users: bool = False, limit: int = 400) -> str:
    """``exc`` as one line: its message alone where it was written for users, else type and message."""
    text = " ".join((str(exc) if written_for_users else f"{type(exc).__name__}: {exc}").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Json())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)
    import torch
    import uvicorn

    from tunelab.engine.access import API_KEY_ENV
    from tunelab.engine.app import build_app
    from tunelab.engine.batcher import Batcher
    from tunelab.engine.model import IMPORT_HINT, LoadError, ServedModel, is_thudm_chatglm

    modules = [spec.partition("=") for spec in args.lora_modules]
    for name, sep, _ in modules:
        if not sep:
            print(f"--lora-modules {name!r}: use NAME=DIR", file=sys.stderr)
            return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    log = logging.getLogger("tunelab.engine")
    what = args.model
    try:
        model = ServedModel(
            args.model,
            args.served_model_name,
            device,
            args.dtype,
            args.trust_remote_code,
            args.max_model_len,
        )
        for name, _, path in modules:
            what = f"adapter {name} ({path})"
            model.load_adapter(name, path)
    except Exception as exc:
        # One line that says why (the gateway shows it as the deployment's error); the traceback
        # goes to the log record's own field.
        ours = isinstance(exc, LoadError)
        hint = f" ({IMPORT_HINT})" if not ours and is_thudm_chatglm(args.model) else ""
        log.error("cannot load %s: %s%s", what, one_line(exc, ours), hint, exc_info=not ours)
        return 3
    model.created = int(time.time())
    batcher = Batcher(model, args.max_batch_size, args.batch_wait_ms / 1000)
    batcher.start()
    log.info("serving %s on %s:%d", ", ".join(model.names()), args.host, args.port)
    api_key = os.environ.pop(API_KEY_ENV, "")  # not passed on to anything this process starts
    if not api_key:
        log.warning(
            "%s is not set: anyone who reaches %s:%d may call this engine", API_KEY_ENV, args.host, args.port
        )
    app = build_app(
        model,
        batcher,
        args.default_max_tokens,
        args.max_body_bytes,
        api_key=api_key,
        adapter_roots=[Path(root) for root in args.adapter_root],
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    batcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
