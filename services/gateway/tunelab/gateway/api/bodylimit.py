"""Request bodies bounded in size, before any of them is parsed.

A body whose Content-Length is over the limit is refused before a byte of it is read; any other
body (chunked, or a Content-Length that lies) is counted as the ASGI server hands it over and
refused at the chunk that crosses the limit, so the gateway never holds more than the limit plus
one chunk. Both refusals are ``BodyTooLarge``, answered 413 by ``api.errors``.
"""

from __future__ import annotations

from starlette.types import Message, Receive, Scope

from tunelab.common import errors

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


class BodyTooLarge(errors.InvalidArgument):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the request body is larger than {limit} bytes, the gateway's limit (TUNELAB_MAX_BODY_BYTES)"
        )


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None where it has none (or one that is not a number)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def check_declared(scope: Scope, limit: int) -> None:
    """Raises ``BodyTooLarge`` when the request says its body is over ``limit``."""
    declared = declared_length(scope)
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)


def bounded(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises ``BodyTooLarge`` once the body's chunks add up to more than ``limit``."""
    seen = 0

    async def receive_bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return receive_bounded
