"""``python -m tunelab.datasets``: settings → logging → construct → serve → graceful stop."""

from __future__ import annotations

import logging
import sys

from tunelab.common.errors import TunelabError
from tunelab.common.grpc.server import run_until_signal
from tunelab.common.logging import setup_logging
from tunelab.common.settings import load_settings
from tunelab.datasets.server import build_server
from tunelab.datasets.settings import DatasetSettings


def main() -> int:
    try:
        settings = load_settings(DatasetSettings)
    except TunelabError as exc:
        print(f"tunelab-datasets: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, service="datasets")
    try:
        server, store = build_server(settings)
    except (TunelabError, OSError) as exc:
        logging.getLogger("tunelab.datasets").error("cannot start: %s", getattr(exc, "message", exc))
        return 1
    store.resume_unfinished()
    run_until_signal(server, settings.grace_period_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
