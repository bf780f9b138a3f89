"""``python -m tunelab.datasets``: settings → logging → construct → serve → graceful stop.

Syncs a crash or restart interrupted resume before the service starts serving.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from tunelab.common.grpc.main import serve_main
from tunelab.common.grpc.server import GrpcServer
from tunelab.datasets.server import build_server
from tunelab.datasets.settings import DatasetSettings


def build(settings: DatasetSettings) -> tuple[GrpcServer, Callable[[], object]]:
    server, store = build_server(settings)
    return server, store.resume_unfinished


if __name__ == "__main__":
    sys.exit(serve_main("datasets", DatasetSettings, build))
