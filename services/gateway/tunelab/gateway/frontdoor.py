"""The domain object behind the HTTP routes: who may call (API keys), where a model is served
(the router's table), and the upstream call with its limits. Built once by ``build_app``."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.common.errors import Unauthenticated
from tunelab.gateway.apikeys import ANONYMOUS, ApiKeys, Caller
from tunelab.gateway.metrics import GatewayMetrics
from tunelab.gateway.proxy import UpstreamCall
from tunelab.gateway.routing import Route, Router


@dataclass
class Limits:
    attempts: int = 3
    default_max_tokens: int = 16
    default_chat_max_tokens: int = 1024


class FrontDoor:
    def __init__(
        self,
        router: Router,
        metrics: GatewayMetrics,
        keys: ApiKeys,
        limits: Limits,
        *,
        auth_required: bool = True,
        open_health: bool = True,
    ) -> None:
        self.router, self.metrics, self.keys, self.limits = router, metrics, keys, limits
        self.auth_required, self.open_health = auth_required, open_health

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller; Unauthenticated unless it sent a valid key. Keys are required unless turned
        off by setting (``TUNELAB_API_KEY_AUTH=off``): having none, or having deleted the last one,
        never opens the routes."""
        if not self.auth_required:
            return ANONYMOUS
        if not self.keys.any:
            raise Unauthenticated(
                "API keys are required and none exists yet: create one with `tunelab key create`"
            )
        return self.keys.verify(authorization)

    def route(self, model: str, caller: Caller) -> Route:
        caller.check_model(model)
        return self.router.route(model)

    def call(self, route: Route, path: str, body: bytes) -> UpstreamCall:
        return UpstreamCall(self.router, self.metrics, route, path, body, self.limits.attempts)
