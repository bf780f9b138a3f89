"""Settings of the gateway (``TUNELAB_*``)."""

from __future__ import annotations

import sys
from typing import Literal

from pydantic import Field

from tunelab.common.settings import (
    DEFAULT_HTTP_PORTS,
    DEFAULT_METRICS_PORTS,
    DEFAULT_PORTS,
    ServiceSettings,
)


class GatewaySettings(ServiceSettings):
    port: int = Field(default=DEFAULT_PORTS["gateway"], description="gRPC port (TUNELAB_PORT).")
    metrics_port: int = Field(default=DEFAULT_METRICS_PORTS["gateway"], description="0 disables it.")
    http_host: str = Field(default="", description="HTTP listen address; empty: the same as `host`.")
    http_port: int = Field(default=DEFAULT_HTTP_PORTS["gateway"], description="HTTP port of the front door.")
    datasets_addr: str = Field(
        default=f"127.0.0.1:{DEFAULT_PORTS['datasets']}",
        description="host:port of the datasets service, for models given as dataset versions.",
    )
    trainer_addr: str = Field(
        default=f"127.0.0.1:{DEFAULT_PORTS['trainer']}",
        description="host:port of the trainer, which runs workload replicas (vLLM or the engine as "
        "server jobs); reached with TUNELAB_AUTH_TOKEN, as the datasets service is.",
    )
    workload_owner: str = Field(
        default="",
        description="Label value (tunelab.dev/gateway) marking the trainer jobs this gateway runs, so "
        "that it finds them after a restart and leaves other gateways' alone; empty: derived from where "
        "its state is kept. Gateways sharing one trainer and one state database share it.",
    )
    api_key_auth: Literal["on", "off"] = Field(
        default="on",
        description="API keys on the generate, OpenAI and Triton routes. On by default: with no key "
        "created yet every such route answers 401. `off` opens them to anyone who can reach the port.",
    )
    api_key_refresh_s: float = Field(
        default=2.0,
        gt=0,
        description="How often the keys are read again from the state database, so that a key "
        "deleted through another gateway sharing it is refused here too (this gateway's own changes "
        "apply at once).",
    )
    open_health: bool = Field(
        default=True, description="Health, readiness and /metrics answer without an API key."
    )
    # Upstream timeouts (a deployment may override each).
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Connecting to a replica.")
    first_token_timeout_s: float = Field(
        default=120.0, gt=0, description="From sending a request to the upstream's first byte."
    )
    idle_timeout_s: float = Field(default=60.0, gt=0, description="Longest silence inside a stream.")
    total_timeout_s: float = Field(default=1800.0, gt=0, description="Longest a request may take.")
    attempts: int = Field(default=3, ge=1, le=10, description="Tries per request, before the first byte.")
    max_in_flight: int = Field(default=256, ge=1, description="Default per-deployment in-flight limit.")
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After sent with 429 and 503.")
    default_max_tokens: int = Field(
        default=16,
        ge=1,
        description="max_tokens sent upstream when a completion or Triton request has none "
        "(vLLM's and OpenAI's default).",
    )
    default_chat_max_tokens: int = Field(
        default=1024, ge=1, description="max_tokens sent upstream when a chat request has none."
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description="Largest request body the HTTP front door reads; larger ones are answered 413 "
        "(a Content-Length over it before any byte is read).",
    )
    health_interval_s: float = Field(default=5.0, gt=0, description="Replica health checks.")
    load_timeout_s: float = Field(default=600.0, gt=0, description="Longest a replica may take to load.")
    drain_timeout_s: float = Field(default=30.0, ge=0, description="Wait for in-flight requests on delete.")
    # Embedded engines that exit are started again (workload replicas: the trainer restarts them).
    restart_backoff_s: float = Field(
        default=1.0,
        gt=0,
        description="Wait before an embedded engine that exited is started again; doubles with each "
        "crash in a row, up to restart_backoff_max_s.",
    )
    restart_backoff_max_s: float = Field(default=60.0, gt=0, description="Longest wait before a restart.")
    restart_stable_s: float = Field(
        default=300.0,
        gt=0,
        description="An engine healthy this long counts as stable: its next crash waits "
        "restart_backoff_s again.",
    )
    restart_load_tries: int = Field(
        default=3,
        ge=1,
        description="Starts in a row an embedded engine may exit before it ever answers healthy; then "
        "its replica is given up (the deployment FAILED when all are). An engine that says it cannot "
        "load its model is given up at once.",
    )
    engine_python: str = Field(
        default=sys.executable, description="Python that runs embedded engines (needs tunelab-engine)."
    )
    gpu_poll_interval_s: float = Field(default=5.0, gt=0, description="NVML polling; off the request path.")
    uvloop: bool = Field(default=True, description="Serve HTTP on uvloop and httptools where installed.")

    @property
    def http_listen_host(self) -> str:
        return self.http_host or self.host
