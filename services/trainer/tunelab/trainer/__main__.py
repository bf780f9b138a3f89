"""``python -m tunelab.trainer``: settings → logging → construct → serve → graceful stop.

Running jobs are left running on stop: the next start re-attaches them (or fails and retries
those whose processes are gone).
"""

from __future__ import annotations

import logging
import sys

from tunelab.common.errors import TunelabError
from tunelab.common.grpc.server import run_until_signal
from tunelab.common.logging import setup_logging
from tunelab.common.settings import load_settings
from tunelab.trainer.server import build_server
from tunelab.trainer.settings import TrainerSettings


def main() -> int:
    try:
        settings = load_settings(TrainerSettings)
    except TunelabError as exc:
        print(f"tunelab-trainer: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, service="trainer")
    try:
        server, trainer = build_server(settings)
    except (TunelabError, OSError) as exc:
        logging.getLogger("tunelab.trainer").error("cannot start: %s", getattr(exc, "message", exc))
        return 1
    trainer.start()
    run_until_signal(server, settings.grace_period_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
