"""``python -m tunelab.common.grpc.healthcheck SERVICE | --address HOST:PORT``: exits 0 when a
tunelab service answers SERVING on gRPC health, 1 otherwise, printing one line that says which.

The container images run it as their health check. ``SERVICE`` (datasets, environments, trainer,
gateway) checks that service on this host: on ``TUNELAB_PORT`` when set (the variable the service
itself listens on), else on the service's default port. Health needs no token.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tunelab.common.settings import DEFAULT_PORTS


def target(service: str, address: str, env: Mapping[str, str]) -> str:
    """The host:port to check: ``address`` if given, else ``SERVICE``'s port on this host."""
    if address:
        return address
    if service not in DEFAULT_PORTS:
        raise ValueError(f"unknown service {service!r}: use one of {', '.join(DEFAULT_PORTS)} or --address")
    port = env.get("TUNELAB_PORT") or str(DEFAULT_PORTS[service])
    if not port.isdigit():
        raise ValueError(f"TUNELAB_PORT={port!r} is not a port number")
    return f"127.0.0.1:{port}"


def check(address: str, service_name: str = "", timeout_s: float = 3.0) -> tuple[bool, str]:
    """(serving, what was seen) for ``address``; ``service_name`` "" is the whole server."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service_name), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            return False, f"{address}: {code.name if code else 'error'}: {exc.details()}"  # type: ignore[attr-defined]
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tunelab.common.grpc.healthcheck", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("service", nargs="?", default="", help=f"one of {', '.join(DEFAULT_PORTS)}")
    p.add_argument("--address", default="", help="host:port to check instead of SERVICE on this host")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = p.parse_args(argv)
    if not args.service and not args.address:
        p.error("give SERVICE or --address")
    try:
        address = target(args.service, args.address, os.environ)
    except ValueError as exc:
        p.error(str(exc))
    serving, seen = check(address, timeout_s=args.timeout)
    print(seen, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
