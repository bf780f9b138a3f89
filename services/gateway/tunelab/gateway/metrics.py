"""Every Prometheus collector of the gateway, on one registry (served at HTTP ``/metrics`` and on
the metrics port, with the gRPC metrics of ``tunelab.common``).

Request metrics (labels: ``model`` = the name the client called, ``route`` = the protocol route
such as ``openai_chat`` or ``triton_generate_stream``, ``code`` = the HTTP status, or 499 for an
abort: the client went away before the answer ended, nginx's "client closed request"):

    tunelab_gateway_requests_total{model,route,code}
    tunelab_gateway_request_duration_seconds{model,route}          histogram, whole request
    tunelab_gateway_time_to_first_token_seconds{model,route}       histogram, streaming only
    tunelab_gateway_inter_token_latency_seconds{model}             histogram, between streamed chunks
    tunelab_gateway_prompt_tokens_total{model}
    tunelab_gateway_generation_tokens_total{model}                 an aborted stream's: the chunks it was sent
    tunelab_gateway_requests_in_flight{model}                      gauge
    tunelab_gateway_upstream_errors_total{model,kind}              connect, timeout, disconnect, http_Nxx
    tunelab_gateway_replicas{deployment,health}                    gauge, healthy / unhealthy

GPU metrics come from ``tunelab.gateway.gpu`` (NVML), registered here too.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "tunelab_gateway_requests",
            "HTTP requests answered, by model, protocol route and status code (499: aborted, the "
            "client went away before the answer ended).",
            ["model", "route", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "tunelab_gateway_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its answer.",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "tunelab_gateway_time_to_first_token_seconds",
            "Streaming requests: time from receiving the request to sending the first token.",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "tunelab_gateway_inter_token_latency_seconds",
            "Streaming requests: time between two streamed chunks (one token each from vLLM).",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "tunelab_gateway_prompt_tokens",
            "Prompt tokens, as the upstream counted them.",
            ["model"],
            registry=registry,
        )
        self.generation_tokens = Counter(
            "tunelab_gateway_generation_tokens",
            "Generated tokens, as the upstream counted them (an aborted stream: the chunks it was sent).",
            ["model"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "tunelab_gateway_requests_in_flight", "Requests being answered now.", ["model"], registry=registry
        )
        self.upstream_errors = Counter(
            "tunelab_gateway_upstream_errors",
            "Failed exchanges with replicas: connect, timeout, disconnect, http_4xx, http_5xx.",
            ["model", "kind"],
            registry=registry,
        )
        self.replicas = Gauge(
            "tunelab_gateway_replicas",
            "Replicas of each deployment by health, as the last check saw them.",
            ["deployment", "health"],
            registry=registry,
        )
        self._children: dict[tuple[str, ...], object] = {}

    # Label lookups cost a lock and a dict; the request path caches the children it uses.
    def _child(self, metric: Counter | Gauge | Histogram, *labels: str) -> object:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_done(self, model: str, route: str, code: int, seconds: float) -> None:
        self._child(self.requests, model, route, str(code)).inc()  # type: ignore[attr-defined]
        self._child(self.duration, model, route).observe(seconds)  # type: ignore[attr-defined]

    def first_token(self, model: str, route: str, seconds: float) -> None:
        self._child(self.ttft, model, route).observe(seconds)  # type: ignore[attr-defined]

    def inter_token(self, model: str, seconds: float) -> None:
        self._child(self.itl, model).observe(seconds)  # type: ignore[attr-defined]

    def tokens(self, model: str, prompt: int, generated: int) -> None:
        if prompt:
            self._child(self.prompt_tokens, model).inc(prompt)  # type: ignore[attr-defined]
        if generated:
            self._child(self.generation_tokens, model).inc(generated)  # type: ignore[attr-defined]

    def in_flight_gauge(self, model: str) -> Gauge:
        return self._child(self.in_flight, model)  # type: ignore[return-value]

    def upstream_error(self, model: str, kind: str) -> None:
        self._child(self.upstream_errors, model, kind).inc()  # type: ignore[attr-defined]

    def set_replicas(self, deployment: str, healthy: int, unhealthy: int) -> None:
        self.replicas.labels(deployment, "healthy").set(healthy)
        self.replicas.labels(deployment, "unhealthy").set(unhealthy)

    def forget_deployment(self, deployment: str) -> None:
        for health in ("healthy", "unhealthy"):
            try:
                self.replicas.remove(deployment, health)
            except KeyError:
                pass
