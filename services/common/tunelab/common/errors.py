"""Typed domain errors.

Domain code raises these; they are mapped to transport status codes at exactly two edges: the gRPC
interceptor in ``tunelab.common.grpc.interceptors`` and the FastAPI exception handlers of the gateway.
Messages are written for the person who must act on them: say what is wrong and what to do.
"""

from __future__ import annotations


class TunelabError(Exception):
    """Base of every error tunelab raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(TunelabError):
    """The request names a bad value; the message names the field, file or line."""


class NotFound(TunelabError):
    """The named resource does not exist."""


class AlreadyExists(TunelabError):
    """A resource with that name exists already."""


class FailedPrecondition(TunelabError):
    """The resource is not in a state that allows the operation."""


class PermissionDenied(TunelabError):
    """The operation is refused by policy (for example an address the settings forbid)."""


class Unauthenticated(TunelabError):
    """No or a wrong credential."""


class ResourceExhausted(TunelabError):
    """A quota or size limit would be exceeded."""


class Unavailable(TunelabError):
    """A dependency (object store, source host, another service) cannot be reached; retry later."""


class DataLoss(TunelabError):
    """Stored content does not match its recorded hash."""


class Unimplemented(TunelabError):
    """The request is valid for the contract but this server does not support it yet."""
