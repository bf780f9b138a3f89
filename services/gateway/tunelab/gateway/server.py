"""Assembles the gateway from settings: ``build_gateway(settings)`` → gRPC server (deployments, API
keys) + HTTP server (the front door) + the domain objects they share."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from tunelab.common.grpc.server import GrpcServer, Registration
from tunelab.common.state import open_database
from tunelab.gateway.api.app import build_asgi
from tunelab.gateway.apikeys import ApiKeys
from tunelab.gateway.deployments import DeploymentManager
from tunelab.gateway.engines import EngineLauncher
from tunelab.gateway.frontdoor import FrontDoor, Limits
from tunelab.gateway.gpu import GpuCollector
from tunelab.gateway.http_server import HttpServer
from tunelab.gateway.jobs import TrainerJobs
from tunelab.gateway.loading import Loader
from tunelab.gateway.metrics import GatewayMetrics
from tunelab.gateway.models import ModelFetcher
from tunelab.gateway.registry import Registry, metadata
from tunelab.gateway.routing import PhaseTimeouts, Router
from tunelab.gateway.servicer import GatewayServicer
from tunelab.gateway.settings import GatewaySettings
from tunelab.gateway.supervision import RestartPolicy, Supervisor
from tunelab.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tunelab.gateway.workloads import Workloads

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    grpc: GrpcServer
    http: HttpServer
    deployments: DeploymentManager
    keys: ApiKeys
    router: Router
    gpu: GpuCollector
    fetcher: ModelFetcher
    jobs: TrainerJobs
    key_refresh_s: float = 2.0

    def __post_init__(self) -> None:
        self._stop = threading.Event()

    def start_http(self) -> None:
        """Everything but the gRPC server: GPU polling, deployments, the HTTP front door."""
        self.gpu.start()
        self.deployments.start()
        self.http.start()
        threading.Thread(target=self._flush_keys, name="api-keys", daemon=True).start()

    def start(self) -> None:
        self.start_http()
        self.grpc.start()

    def _flush_keys(self) -> None:
        """Reads the keys again every ``key_refresh_s`` (changes made by other gateways sharing the
        database) and writes their last-use times every 10 s."""
        flushed = time.monotonic()
        while not self._stop.wait(self.key_refresh_s):
            try:
                self.keys.reload()
                if time.monotonic() - flushed >= 10:
                    flushed = time.monotonic()
                    self.keys.flush_usage()
            except Exception:  # the database is away: keep the index, try again
                log.warning("could not read or update the API keys", exc_info=True)

    def close(self) -> None:
        """Stops everything but the gRPC server (its ``on_stop``)."""
        self._stop.set()
        self.http.stop()
        self.deployments.close()
        self.keys.flush_usage()
        self.gpu.stop()
        self.fetcher.close()
        self.jobs.close()

    def stop(self, grace_s: float = 1.0) -> None:
        self.grpc.stop(grace_s)  # calls close()


def workload_owner(settings: GatewaySettings) -> str:
    """The label value of this gateway's replica jobs: set, or a digest of where its state is kept
    (gateways that share their deployments share it)."""
    if settings.workload_owner:
        return settings.workload_owner
    where = settings.state_url or str((settings.data_dir / "gateway" / "state.sqlite").resolve())
    return "gw-" + hashlib.sha256(where.encode()).hexdigest()[:12]


def build_gateway(settings: GatewaySettings) -> Gateway:
    data_dir = settings.data_dir / "gateway"
    registry = Registry(open_database(settings.state_url, data_dir / "state.sqlite", metadata))
    prom = CollectorRegistry()
    metrics = GatewayMetrics(prom)
    gpu = GpuCollector(settings.gpu_poll_interval_s)
    prom.register(gpu)
    router = Router(settings.retry_after_s)
    keys = ApiKeys(registry)
    token = settings.auth_token.get_secret_value()
    fetcher = ModelFetcher(settings.datasets_addr, token, data_dir / "models")
    jobs = TrainerJobs(settings.trainer_addr, token)
    loader = Loader(
        fetcher,
        EngineLauncher(settings.engine_python, data_dir / "logs"),
        settings.load_timeout_s,
        workloads=Workloads(jobs, fetcher, workload_owner(settings), key_secret=token),
        supervisor=Supervisor(
            RestartPolicy(
                settings.restart_backoff_s,
                settings.restart_backoff_max_s,
                settings.restart_stable_s,
                settings.restart_load_tries,
                settings.load_timeout_s,
            )
        ),
    )
    timeouts = PhaseTimeouts(
        settings.connect_timeout_s,
        settings.first_token_timeout_s,
        settings.idle_timeout_s,
        settings.total_timeout_s,
    )
    deployments = DeploymentManager(
        registry,
        loader,
        router,
        metrics,
        timeouts,
        max_in_flight=settings.max_in_flight,
        health_interval_s=settings.health_interval_s,
        drain_timeout_s=settings.drain_timeout_s,
    )
    limits = Limits(settings.attempts, settings.default_max_tokens, settings.default_chat_max_tokens)
    frontdoor = FrontDoor(
        router,
        metrics,
        keys,
        limits,
        auth_required=settings.api_key_auth == "on",
        open_health=settings.open_health,
    )
    http = HttpServer(
        build_asgi(frontdoor, settings.max_body_bytes),
        settings.http_listen_host,
        settings.http_port,
        fast=settings.uvloop,
        grace_s=settings.grace_period_s,
    )
    full_name = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
    gateway: Gateway
    grpc_server = GrpcServer(
        "gateway",
        f"{settings.host}:{settings.port}",
        [
            Registration(
                full_name,
                gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
                GatewayServicer(deployments, keys, router),
            )
        ],
        auth_token=token,
        registry=prom,
        metrics_port=settings.metrics_port or None,
        on_stop=lambda: gateway.close(),
    )
    gateway = Gateway(
        grpc_server, http, deployments, keys, router, gpu, fetcher, jobs, settings.api_key_refresh_s
    )
    return gateway
