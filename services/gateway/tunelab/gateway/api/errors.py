"""The one mapping from errors to HTTP answers, installed as the app's exception handlers.

Two body shapes, by route: OpenAI's error object for ``/v1/*`` (with vLLM's integer ``code``),
``{"error": "..."}`` for everything else (Triton generate and KServe v2). Statuses follow Triton's
mapping (invalid argument 400, not found 404, unavailable 503, internal 500) plus 401, 403, 413,
429 and 504; 429 and 503 carry Retry-After. Unknown exceptions are logged with an incident id and
answered 500 without the traceback.
"""

from __future__ import annotations

import json
import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tunelab.common import errors
from tunelab.gateway.api.bodylimit import BodyTooLarge
from tunelab.gateway.errors import ModelNotReady, Overloaded, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

STATUS: tuple[tuple[type[errors.TunelabError], int], ...] = (
    (UpstreamTimeout, 504),
    (BodyTooLarge, 413),
    (errors.InvalidArgument, 400),
    (errors.NotFound, 404),
    (errors.AlreadyExists, 400),
    (errors.FailedPrecondition, 400),
    (errors.PermissionDenied, 403),
    (errors.Unauthenticated, 401),
    (errors.ResourceExhausted, 429),
    (errors.Unavailable, 503),
    (errors.DataLoss, 500),
)
OPENAI_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "BadRequestError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
    504: "TimeoutError",
}


def status_of(exc: Exception) -> int:
    if isinstance(exc, UpstreamError):
        return exc.status
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def is_openai(path: str) -> bool:
    return path.startswith("/v1/")


def error_body(path: str, message: str, status: int) -> bytes:
    if is_openai(path):
        kind = OPENAI_TYPES.get(status, "InternalServerError" if status >= 500 else "BadRequestError")
        body: dict[str, object] = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    else:
        body = {"error": message}
    return json.dumps(body, ensure_ascii=False).encode()


def error_response(path: str, exc: Exception) -> Response:
    """The answer for ``exc`` on a route at ``path``."""
    status = status_of(exc)
    if isinstance(exc, errors.TunelabError):
        message = exc.message
    else:
        incident = uuid.uuid4().hex[:12]
        log.error("unhandled error on %s (incident %s)", path, incident, exc_info=exc)
        message = f"internal error (incident {incident}); the gateway log has the details"
    headers: dict[str, str] = {}
    if isinstance(exc, Overloaded | ModelNotReady):
        headers["retry-after"] = str(exc.retry_after_s)
    elif isinstance(exc, UpstreamError) and exc.retry_after:
        headers["retry-after"] = exc.retry_after
    elif status == 401:
        headers["www-authenticate"] = "Bearer"
    return Response(error_body(path, message, status), status, headers, media_type="application/json")


def answer_error(request: Request, exc: Exception) -> Response:
    """The answer for ``exc``, counted in the request's metrics when it has a tracker."""
    response = error_response(request.url.path, exc)
    tracker = getattr(request.state, "tracker", None)
    if tracker is not None:
        tracker.done(response.status_code)
    return response


async def _domain(request: Request, exc: Exception) -> Response:
    return answer_error(request, exc)


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
    )
    return error_response(request.url.path, errors.InvalidArgument(problems or "invalid request"))


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if status == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    body = error_body(request.url.path, message, status)
    return Response(body, status, dict(exc.headers or {}), media_type="application/json")


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.TunelabError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _domain)
