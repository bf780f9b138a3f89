"""``python -m tunelab.gateway``: settings → logging → construct → serve (gRPC and HTTP) →
graceful stop."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tunelab.common.grpc.main import serve_main
from tunelab.common.grpc.server import GrpcServer
from tunelab.gateway.server import build_gateway
from tunelab.gateway.settings import GatewaySettings


def build(settings: GatewaySettings) -> tuple[GrpcServer, Callable[[], object]]:
    gateway = build_gateway(settings)
    gateway.start_http()
    return gateway.grpc, lambda: None


if __name__ == "__main__":
    sys.exit(serve_main("gateway", GatewaySettings, build))
