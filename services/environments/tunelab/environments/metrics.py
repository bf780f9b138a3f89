"""The environments service's own collectors (the gRPC ones come with the server)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class BuildMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.finished = Counter(
            "tunelab_environment_builds",
            "Environments that reached READY or FAILED, by result (built, cache_hit, failed).",
            ["result"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "tunelab_environment_build_duration_seconds",
            "Create to READY of environments that were built (not cache hits).",
            registry=self.registry,
            buckets=(1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640, 1800),
        )
