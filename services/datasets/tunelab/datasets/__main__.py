"""``python -m tunelab.datasets``: settings → logging → construct → serve → graceful stop.

Before the service starts serving, uploads a crash or restart interrupted are marked FAILED and
the syncs it interrupted resume; partial writes it left are removed in the background.
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

    def before_serving() -> None:
        store.clean_up_interrupted()
        store.resume_unfinished()

    return server, before_serving


if __name__ == "__main__":
    sys.exit(serve_main("datasets", DatasetSettings, build))
