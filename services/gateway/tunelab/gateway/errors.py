"""The gateway's own typed errors, refinements of ``tunelab.common.errors``.

They are raised by the routing and proxy code and mapped to HTTP once, in
``tunelab.gateway.api.errors`` (Triton ``{"error": ...}`` or OpenAI's error object, by route).
"""

from __future__ import annotations

from tunelab.common.errors import ResourceExhausted, TunelabError, Unavailable


class Overloaded(ResourceExhausted):
    """The deployment has ``max_in_flight`` requests already: 429 with Retry-After."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelNotReady(Unavailable):
    """No healthy replica serves the model (yet): 503 with Retry-After."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UpstreamTimeout(Unavailable):
    """A replica did not connect, answer or continue in time: 504."""


class UpstreamError(TunelabError):
    """A replica answered with an error: its status and message are passed on."""

    def __init__(self, message: str, status: int, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
