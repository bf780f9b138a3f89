"""Server bootstrap shared by every service.

``build_server`` assembles a gRPC server with health (NOT_SERVING until ``start`` finishes),
reflection, the auth/metrics/error interceptors and a Prometheus endpoint; ``run_until_signal``
serves until SIGTERM/SIGINT and stops gracefully.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from tunelab.common.grpc.interceptors import (
    AuthInterceptor,
    ErrorInterceptor,
    MetricsInterceptor,
    RpcMetrics,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# How long a stop waits, past the grace period, for handlers that ignore the cancellation grpc sends them.
STOP_SLACK_S = 5.0
# How often the main thread wakes while it waits for SIGTERM: a signal the kernel hands to another
# thread only sets a flag, which the main thread acts on when it next runs Python code.
SIGNAL_POLL_S = 0.5


@dataclass(frozen=True)
class Registration:
    """One gRPC service to mount: its generated ``add_…_to_server`` function and servicer."""

    full_name: str
    add: Callable[[Any, grpc.Server], None]
    servicer: Any


class GrpcServer:
    """A started-on-demand gRPC server with health, reflection, metrics and graceful stop."""

    def __init__(
        self,
        name: str,
        address: str,
        registrations: list[Registration],
        *,
        auth_token: str = "",
        registry: CollectorRegistry | None = None,
        metrics_port: int | None = None,
        max_workers: int = 32,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.registry = registry or CollectorRegistry()
        self._metrics_port = metrics_port
        self._metrics_http: WSGIServer | None = None
        self._on_stop = on_stop
        interceptors: list[grpc.ServerInterceptor] = [MetricsInterceptor(RpcMetrics(self.registry, name))]
        if auth_token:
            interceptors.append(AuthInterceptor(auth_token))
        interceptors.append(ErrorInterceptor())
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"{name}-rpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        names = [reflection.SERVICE_NAME, health.SERVICE_NAME]
        for reg in registrations:
            reg.add(reg.servicer, self._server)
            names.append(reg.full_name)
            self.health.set(reg.full_name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(names, self._server)
        self._service_names = [r.full_name for r in registrations]
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}: the port is taken or the host is wrong")
        self.host = address.rsplit(":", 1)[0]
        self.address = f"{self.host}:{self.port}"
        self._stopped = threading.Event()

    def start(self) -> None:
        if self._metrics_port is not None:
            # /metrics listens where the gRPC port does: a service kept on loopback stays there.
            host = self.host.removeprefix("[").removesuffix("]")
            self._metrics_http, _ = start_http_server(self._metrics_port, addr=host, registry=self.registry)
        self._server.start()
        for name in ["", *self._service_names]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving", self.name, extra={"address": self.address, "metrics_port": self._metrics_port})

    def stop(self, grace: float = 10.0) -> None:
        """Marks NOT_SERVING, lets in-flight RPCs finish for ``grace`` seconds, then stops.

        After ``grace`` grpc cancels the RPCs still running, but a handler that never looks at its
        context (a poll loop, a blocking call) keeps the server's shutdown waiting for it: the wait
        is bounded, so one stuck handler cannot hold the stop forever.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        if not self._server.stop(grace).wait(grace + STOP_SLACK_S):
            log.warning(
                "%s: RPCs still running %.0f s after the grace period; stopping without them",
                self.name,
                STOP_SLACK_S,
            )
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        if self._on_stop:
            self._on_stop()
        log.info("%s stopped", self.name)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) the /metrics endpoint listens on once started; None when it is off."""
        if self._metrics_http is None:
            return None
        host, port = self._metrics_http.server_address[:2]
        return str(host), int(port)

    def wait(self) -> None:
        self._server.wait_for_termination()


def run_until_signal(server: GrpcServer, grace: float) -> None:
    """Starts ``server`` and blocks until SIGTERM or SIGINT, then stops it gracefully."""
    done = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    server.start()
    while not done.wait(SIGNAL_POLL_S):
        pass
    server.stop(grace)
