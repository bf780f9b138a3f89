"""Model name → the replicas that serve it, and which replica takes the next request.

The control plane (deployments, health checks; threads) publishes a :class:`RouteTable` of plain
values; the data plane (the HTTP event loop) reads the latest one on every request. A table is
never changed after it is published, so the swap is the only synchronisation needed.

Replica state the data plane owns (connection pools, requests in flight) lives in
:class:`Router`, keyed by URL, and survives republishing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tunelab.common.errors import NotFound
from tunelab.gateway.errors import ModelNotReady, Overloaded
from tunelab.gateway.specs import DeploymentSpec, DeploymentStatus
from tunelab.gateway.upstream.http1 import Http1Pool


@dataclass(frozen=True)
class PhaseTimeouts:
    connect: float
    first_token: float
    idle: float
    total: float


@dataclass(frozen=True)
class Route:
    """How to call one served model name."""

    model: str  # the name the client called
    deployment: str  # deployment id (the in-flight limit is per deployment)
    upstream_model: str  # the name the replicas know it by
    urls: tuple[str, ...]  # every replica
    healthy: frozenset[str]  # the replicas to route to now
    state: str
    max_in_flight: int
    timeouts: PhaseTimeouts
    api_key: str = ""  # sent to every replica without a key of its own in ``replica_keys``
    version: str = "1"
    created: int = 0
    parent: str = ""  # for an adapter: the base model's served name
    replica_keys: Mapping[str, str] = field(default_factory=dict, repr=False)  # URL → its own key

    def key_of(self, url: str) -> str:
        """The bearer key replica ``url`` requires ("" for none)."""
        return self.replica_keys.get(url, self.api_key)


@dataclass(frozen=True)
class RouteTable:
    routes: dict[str, Route] = field(default_factory=dict)
    # deployment id → whether it can answer now (some replica healthy); for /v2/health/ready
    ready: dict[str, bool] = field(default_factory=dict)

    def get(self, model: str) -> Route | None:
        return self.routes.get(model)


def deployment_routes(
    spec: DeploymentSpec,
    status: DeploymentStatus,
    urls: tuple[str, ...],
    base_name: str,
    defaults: PhaseTimeouts,
    max_in_flight: int,
    replica_keys: Mapping[str, str] | None = None,
) -> dict[str, Route]:
    """The routes of one routable deployment: its model name (the default adapter, else the base as
    the replicas name it) and each adapter by its own name. ``replica_keys``: the keys of replicas
    that require their own (embedded engines, workload servers), by URL."""
    t = spec.timeouts
    timeouts = PhaseTimeouts(
        t.connect or defaults.connect,
        t.first_token or defaults.first_token,
        t.idle or defaults.idle,
        t.total or defaults.total,
    )

    keys = dict(replica_keys or {})

    def route(model: str, upstream_model: str, parent: str = "") -> Route:
        return Route(
            model=model,
            deployment=spec.id,
            upstream_model=upstream_model,
            urls=urls,
            healthy=frozenset(s.url for s in status.replicas if s.healthy),
            state=status.state,
            max_in_flight=spec.max_in_flight or max_in_flight,
            timeouts=timeouts,
            api_key=spec.upstream.api_key,
            created=int(status.create_time),
            parent=parent,
            replica_keys=keys,
        )

    routes = {spec.model_name: route(spec.model_name, spec.default_adapter or base_name or spec.model_name)}
    for a in spec.adapters:
        routes[a.name] = route(a.name, a.name, parent=spec.model_name)
    return routes


class Replica:
    __slots__ = ("in_flight", "pool", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.pool = Http1Pool(url)
        self.in_flight = 0


class Router:
    """Picks replicas (least outstanding requests) and enforces the per-deployment in-flight limit."""

    def __init__(self, retry_after_s: int = 1) -> None:
        self.table = RouteTable()
        self.retry_after_s = retry_after_s
        self._replicas: dict[str, Replica] = {}
        self.deployment_in_flight: dict[str, int] = {}

    def publish(self, table: RouteTable) -> None:
        self.table = table

    def route(self, model: str) -> Route:
        route = self.table.routes.get(model)
        if route is None:
            raise NotFound(
                f"model {model!r} is not deployed here; `tunelab model ls` lists the served models"
            )
        return route

    def admit(self, route: Route) -> None:
        """Counts a request against its deployment, or refuses it (429) when the deployment is full."""
        n = self.deployment_in_flight.get(route.deployment, 0)
        if n >= route.max_in_flight:
            raise Overloaded(
                f"model {route.model!r} has {n} requests in flight, its limit; retry shortly",
                self.retry_after_s,
            )
        self.deployment_in_flight[route.deployment] = n + 1

    def release(self, route: Route) -> None:
        self.deployment_in_flight[route.deployment] -= 1

    def pick(self, route: Route, exclude: set[str] | None = None) -> Replica:
        """The healthy replica with the fewest requests in flight (ties: first listed)."""
        best: Replica | None = None
        for url in route.urls:
            if url not in route.healthy or (exclude and url in exclude):
                continue
            replica = self._replicas.get(url)
            if replica is None:
                replica = self._replicas[url] = Replica(url)
            if best is None or replica.in_flight < best.in_flight:
                best = replica
        if best is None:
            state = route.state.lower()
            raise ModelNotReady(
                f"model {route.model!r} has no healthy replica (deployment {state}); "
                "`tunelab model get` shows why",
                self.retry_after_s,
            )
        return best

    def in_flight(self, url: str) -> int:
        replica = self._replicas.get(url)
        return replica.in_flight if replica else 0

    def close(self) -> None:
        for replica in self._replicas.values():
            replica.pool.close()
        self._replicas.clear()
