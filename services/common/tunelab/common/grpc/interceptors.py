"""The server interceptors every service installs: auth, metrics and the one error mapping.

Order (outermost first): metrics → auth → errors → servicer. Each wraps the method handler's
behaviour so unary and streaming RPCs are treated alike.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from tunelab.common import errors

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.TunelabError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}

# Methods any caller may use without a token: health checks and reflection.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Behaviour = Callable[[Any, grpc.ServicerContext], Any]
Wrapper = Callable[[Behaviour, bool, str], Behaviour]


def status_of(exc: errors.TunelabError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]  # type: ignore[index]
    return grpc.StatusCode.UNKNOWN


def _rewrap(handler: grpc.RpcMethodHandler, wrap: Wrapper, method: str) -> grpc.RpcMethodHandler:
    """Returns ``handler`` with its behaviour passed through ``wrap(behaviour, streaming, method)``."""
    kinds = (
        ("unary_unary", False, grpc.unary_unary_rpc_method_handler),
        ("unary_stream", True, grpc.unary_stream_rpc_method_handler),
        ("stream_unary", False, grpc.stream_unary_rpc_method_handler),
        ("stream_stream", True, grpc.stream_stream_rpc_method_handler),
    )
    for attr, streaming, make in kinds:
        behaviour = getattr(handler, attr)
        if behaviour is not None:
            return make(  # type: ignore[no-any-return]
                wrap(behaviour, streaming, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


class _WrappingInterceptor(grpc.ServerInterceptor):
    def wrap(self, behaviour: Behaviour, streaming: bool, method: str) -> Behaviour:
        raise NotImplementedError

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return _rewrap(handler, self.wrap, handler_call_details.method)


class ErrorInterceptor(_WrappingInterceptor):
    """Maps domain errors to status codes; anything else becomes INTERNAL with a logged traceback."""

    def wrap(self, behaviour: Behaviour, streaming: bool, method: str) -> Behaviour:
        def abort(context: grpc.ServicerContext, exc: Exception) -> None:
            if isinstance(exc, errors.TunelabError):
                context.abort(status_of(exc), exc.message)
            incident = uuid.uuid4().hex[:12]
            log.error("unhandled error in %s (incident %s)", method, incident, exc_info=exc)
            context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error in {method} (incident {incident}); the service log has the details",
            )

        if streaming:

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from behaviour(request, context)
                except Exception as exc:
                    if _is_abort(exc, context):
                        raise
                    abort(context, exc)

            return stream

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behaviour(request, context)
            except Exception as exc:
                if _is_abort(exc, context):
                    raise
                abort(context, exc)

        return unary


def _is_abort(exc: Exception, context: grpc.ServicerContext) -> bool:
    """True when ``exc`` is grpc's own exception from ``context.abort`` (already a status)."""
    return type(exc) is Exception and context.code() not in (None, grpc.StatusCode.OK)


class AuthInterceptor(_WrappingInterceptor):
    """Requires ``authorization: Bearer <token>`` on every method except health and reflection.

    The scheme is matched in any case (RFC 6750 and RFC 9110 make auth schemes case-insensitive);
    the token itself is compared exactly, in constant time.
    """

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        scheme, _, credentials = str(metadata.get("authorization", "")).strip().partition(" ")
        token_ok = hmac.compare_digest(credentials.strip().encode(), self._expected)
        if scheme.lower() == "bearer" and token_ok:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return _rewrap(handler, self.wrap, handler_call_details.method)

    def wrap(self, behaviour: Behaviour, streaming: bool, method: str) -> Behaviour:
        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token: set TUNELAB_AUTH_TOKEN (or --token) to the service's token",
            )

        return deny


class RpcMetrics:
    """The collectors every gRPC service exports, registered on the service's own registry."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self.requests = Counter(
            "tunelab_grpc_requests",
            "gRPC requests handled, by method and status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "tunelab_grpc_request_duration_seconds",
            "Time to handle a gRPC request (whole stream for streaming methods).",
            ["service", "method"],
            registry=registry,
            buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10, 60, 600),
        )


class MetricsInterceptor(_WrappingInterceptor):
    """Counts every RPC by method and status code and times it."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._m = metrics

    def wrap(self, behaviour: Behaviour, streaming: bool, method: str) -> Behaviour:
        m = self._m
        short = method.rsplit("/", 1)[-1]

        def record(context: grpc.ServicerContext, started: float) -> None:
            code = context.code() or grpc.StatusCode.OK
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            m.requests.labels(m.service, short, name).inc()
            m.duration.labels(m.service, short).observe(time.perf_counter() - started)

        if streaming:

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                started = time.perf_counter()
                try:
                    yield from behaviour(request, context)
                finally:
                    record(context, started)

            return stream

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                return behaviour(request, context)
            finally:
                record(context, started)

        return unary
