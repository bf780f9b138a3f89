"""Which paths need an API key, and who the caller is.

Open without a key: the OpenAPI docs, and (unless ``TUNELAB_OPEN_HEALTH=false``) ``/healthz``,
``/metrics``, ``/v2/health/*`` and ``/v2/models/{m}[/versions/{v}]/ready``. Every other path,
including unknown ones, needs ``Authorization: Bearer <key>`` unless keys are turned off
(``TUNELAB_API_KEY_AUTH=off``); with no key created yet they answer 401. The check runs once per
request, in the app's ASGI entry (``api.entry``), before any routing.
"""

from __future__ import annotations

import re

from starlette.types import Scope

from tunelab.gateway.apikeys import Caller
from tunelab.gateway.frontdoor import FrontDoor

DOCS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
HEALTH = frozenset({"/healthz", "/metrics", "/v2/health/live", "/v2/health/ready"})
MODEL_READY = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$")


def is_open(path: str, open_health: bool) -> bool:
    if path in DOCS:
        return True
    return open_health and (path in HEALTH or MODEL_READY.match(path) is not None)


def authorize(scope: Scope, frontdoor: FrontDoor) -> Caller | None:
    """The caller of a request (None on open paths); Unauthenticated when the key is missing or wrong."""
    if is_open(scope["path"], frontdoor.open_health):
        return None
    authorization = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
            break
    return frontdoor.authenticate(authorization)
