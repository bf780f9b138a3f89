"""The gateway's domain values: what a deployment asks for (its spec) and what it is now (its status).

A spec is stored as JSON (``to_dict``/``from_dict``); the gRPC servicer converts protos to and from
these values in ``convert.py``, so the domain never sees a proto.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

STATES = ("PENDING", "LOADING", "READY", "DEGRADED", "FAILED", "DELETING")
# States in which requests are routed (to the replicas that are healthy).
ROUTABLE = ("READY", "DEGRADED", "LOADING")


@dataclass(frozen=True)
class ModelSource:
    """Exactly one of ``dataset_version`` ("datasets/x[/versions/n]") and ``path``."""

    dataset_version: str = ""
    path: str = ""
    subpath: str = ""
    resolved_version: str = ""


@dataclass(frozen=True)
class Adapter:
    name: str
    source: ModelSource


# Runtimes of a workload upstream: the server command a replica job runs.
RUNTIMES = ("vllm", "engine")


@dataclass(frozen=True)
class UpstreamSpec:
    """``kind`` is "vllm" (``base_urls`` started elsewhere), "embedded" (engines we start) or
    "workload" (servers the trainer runs as jobs, one per replica: ``runtime`` and the fields
    after it)."""

    kind: str
    base_urls: tuple[str, ...] = ()
    api_key: str = ""
    model_dir: str = ""
    device: str = ""
    dtype: str = ""
    max_batch_size: int = 0
    trust_remote_code: bool = False  # embedded, workload: run code shipped in the model directory
    runtime: str = ""  # workload: "vllm" or "engine"
    gpu_count: int = 0  # per replica; 0: 1 for vLLM, none for the engine
    environment: str = ""  # "environments/x" with the runtime installed
    image: str = ""
    queue: str = ""  # "queues/x"
    priority_class: str = ""  # empty: "high"
    args: tuple[str, ...] = ()  # appended to the runtime's command line
    cpu_millis: int = 0
    memory_bytes: int = 0


@dataclass(frozen=True)
class Timeouts:
    """Seconds; 0 means the gateway's setting."""

    connect: float = 0.0
    first_token: float = 0.0
    idle: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class DeploymentSpec:
    id: str
    model_name: str
    base: ModelSource
    upstream: UpstreamSpec
    adapters: tuple[Adapter, ...] = ()
    default_adapter: str = ""
    replicas: int = 1
    max_in_flight: int = 0
    timeouts: Timeouts = field(default_factory=Timeouts)
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"deployments/{self.id}"

    def served_names(self) -> list[str]:
        """Every model name clients may call: the model name, then each adapter's name."""
        return [self.model_name, *(a.name for a in self.adapters)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploymentSpec:
        up = dict(data["upstream"])
        up["base_urls"] = tuple(up.get("base_urls", ()))
        up["args"] = tuple(up.get("args", ()))
        return cls(
            **{
                **data,
                "base": ModelSource(**data["base"]),
                "upstream": UpstreamSpec(**up),
                "adapters": tuple(
                    Adapter(a["name"], ModelSource(**a["source"])) for a in data.get("adapters", ())
                ),
                "timeouts": Timeouts(**data.get("timeouts", {})),
            }
        )

    def with_changes(self, **changes: Any) -> DeploymentSpec:
        return replace(self, **changes)


@dataclass(frozen=True)
class ReplicaStatus:
    url: str
    healthy: bool = False
    models: tuple[str, ...] = ()
    error: str = ""
    in_flight: int = 0
    last_check_time: float | None = None
    job: str = ""  # workload: the trainer job running this replica ("jobs/x")
    restarts: int = 0  # times its server was started again after it exited (gateway or trainer)
    restart_reason: str = ""  # why, the last time
    waiting: bool = False  # it does not answer (yet): a server that is starting, or away for a while


@dataclass(frozen=True)
class DeploymentStatus:
    state: str = "PENDING"
    error: str = ""
    replicas: tuple[ReplicaStatus, ...] = ()
    create_time: float = 0.0
    update_time: float = 0.0
    ready_time: float | None = None


@dataclass(frozen=True)
class Deployment:
    spec: DeploymentSpec
    status: DeploymentStatus
    revision: int = 0
