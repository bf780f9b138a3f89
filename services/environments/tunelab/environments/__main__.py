"""``python -m tunelab.environments``: settings → logging → construct → serve → graceful stop."""

from __future__ import annotations

import logging
import sys
import threading

from tunelab.common.errors import TunelabError
from tunelab.common.grpc.server import run_until_signal
from tunelab.common.logging import setup_logging
from tunelab.common.settings import load_settings
from tunelab.environments.server import build_server
from tunelab.environments.settings import EnvironmentSettings


def main() -> int:
    try:
        settings = load_settings(EnvironmentSettings)
    except TunelabError as exc:
        print(f"tunelab-environments: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, service="environments")
    try:
        server, store = build_server(settings)
    except (TunelabError, OSError) as exc:
        logging.getLogger("tunelab.environments").error("cannot start: %s", getattr(exc, "message", exc))
        return 1
    # Finding interpreters can take seconds (uv probes every python on PATH): start it now.
    threading.Thread(target=store.uv.interpreters, name="find-pythons", daemon=True).start()
    store.resume_unfinished()
    run_until_signal(server, settings.grace_period_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
