"""``python -m tunelab.environments``: settings → logging → construct → serve → graceful stop.

Builds a restart interrupted resume, and the search for interpreters starts, before serving.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from tunelab.common.grpc.main import serve_main
from tunelab.common.grpc.server import GrpcServer
from tunelab.environments.server import build_server
from tunelab.environments.settings import EnvironmentSettings


def build(settings: EnvironmentSettings) -> tuple[GrpcServer, Callable[[], object]]:
    server, store = build_server(settings)

    def before_serving() -> None:
        # Finding interpreters can take seconds (uv probes every python on PATH): start it now.
        threading.Thread(target=store.uv.interpreters, name="find-pythons", daemon=True).start()
        store.resume_unfinished()

    return server, before_serving


if __name__ == "__main__":
    sys.exit(serve_main("environments", EnvironmentSettings, build))
