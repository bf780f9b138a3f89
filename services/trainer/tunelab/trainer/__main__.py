"""``python -m tunelab.trainer``: settings → logging → construct → serve → graceful stop.

Running jobs are left running on stop: the next start re-attaches them (or fails and retries
those whose processes are gone).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from tunelab.common.grpc.main import serve_main
from tunelab.common.grpc.server import GrpcServer
from tunelab.trainer.server import build_server
from tunelab.trainer.settings import TrainerSettings


def build(settings: TrainerSettings) -> tuple[GrpcServer, Callable[[], object]]:
    server, trainer = build_server(settings)
    return server, trainer.start


if __name__ == "__main__":
    sys.exit(serve_main("trainer", TrainerSettings, build))
