"""Who may call the engine, and where it may load adapters from.

The gateway starts each engine with a random key in ``TUNELAB_ENGINE_API_KEY`` (the environment,
not argv, which other users can read in /proc) and sends it as ``Authorization: Bearer <key>``;
every route but ``/health`` (liveness) requires it, so a local process cannot go around the
gateway's API keys by calling the engine's port. Runtime LoRA loading reads only directories under
the engine's adapter roots (``--adapter-root``: the gateway's materialized model store), checked
after resolving symlinks.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

API_KEY_ENV = "TUNELAB_ENGINE_API_KEY"
OPEN_PATHS = frozenset({"/health"})


class BearerAuth:
    """ASGI middleware: 401 (OpenAI's error object) unless ``Authorization: Bearer <api_key>``."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        if not api_key:
            raise ValueError("BearerAuth needs a key")
        self.app = app
        self._expected = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        message = "missing or wrong API key: send `Authorization: Bearer <key>`"
        body = json.dumps(
            {"error": {"message": message, "type": "AuthenticationError", "param": None, "code": 401}}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b"Bearer"),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.strip().partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credentials.strip(), self._expected
                )
        return False


class AdapterPathRefused(ValueError):
    """A runtime adapter path outside the adapter roots (or no roots given)."""


def confined_adapter_dir(path: str, roots: Sequence[Path]) -> Path:
    """``path`` resolved (symlinks followed), when it is a directory under one of ``roots``;
    AdapterPathRefused naming the path otherwise."""
    if not roots:
        raise AdapterPathRefused(
            f"lora_path {path!r}: this engine loads adapters at runtime only from under its "
            "--adapter-root, and none was given"
        )
    resolved = Path(path).resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        raise AdapterPathRefused(
            f"lora_path {path!r} is outside the adapter roots ({', '.join(str(r) for r in roots)})"
        )
    if not resolved.is_dir():
        raise AdapterPathRefused(f"lora_path {path!r} is not a directory")
    for entry in resolved.iterdir():  # the files the adapter is read from stay under the roots too
        if entry.is_symlink() and not any(entry.resolve().is_relative_to(r.resolve()) for r in roots):
            raise AdapterPathRefused(f"lora_path {path!r}: {entry.name} links outside the adapter roots")
    return resolved
