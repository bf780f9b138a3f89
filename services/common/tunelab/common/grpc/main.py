"""The one ``main`` every service's ``python -m tunelab.<service>`` runs:
settings → logging → construct → serve → graceful stop on SIGTERM."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from tunelab.common.errors import TunelabError
from tunelab.common.grpc.server import GrpcServer, run_until_signal
from tunelab.common.logging import setup_logging
from tunelab.common.settings import ServiceSettings, load_settings

S = TypeVar("S", bound=ServiceSettings)
# Builds the service from its settings: the gRPC server, and what to run before it serves
# (resuming interrupted work, warming caches).
Build = Callable[[S], tuple[GrpcServer, Callable[[], object]]]


def serve_main(service: str, settings_cls: type[S], build: Build[S]) -> int:
    """Exit codes: 0 after a graceful stop (the process ends there, see ``exit_now``), 2 for bad
    settings (the message names the variable), 1 when the service cannot start (a port taken, the
    object store unreachable, …)."""
    try:
        settings = load_settings(settings_cls)
    except TunelabError as exc:
        print(f"tunelab-{service}: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, service=service)
    try:
        server, before_serving = build(settings)
    except (TunelabError, OSError) as exc:
        logging.getLogger(f"tunelab.{service}").error("cannot start: %s", getattr(exc, "message", exc))
        return 1
    before_serving()
    run_until_signal(server, settings.grace_period_s)
    exit_now(0)


def exit_now(code: int) -> NoReturn:
    """Ends the process after a graceful stop, without joining the threads still running.

    Background work (a dataset sync, an environment build, a model fetch) runs on pool threads that
    do not watch for the stop, and interpreter shutdown joins every one of them: a sync in the
    middle of a slow download held the exit until the download ended. That work is resumable by
    design (it survives a SIGKILL: staging on disk, state in the database), so nothing is lost by
    not waiting for it. Skipping interpreter teardown also keeps the exit quick on a loaded
    machine: it took 1.5-2.8 s on 2 cores at a load average of 17.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    os._exit(code)
