"""``python -m tunelab.gateway``: settings → logging → construct → serve → graceful stop."""

from __future__ import annotations

import logging
import sys

from tunelab.common.errors import TunelabError
from tunelab.common.grpc.server import run_until_signal
from tunelab.common.logging import setup_logging
from tunelab.common.settings import load_settings
from tunelab.gateway.server import build_gateway
from tunelab.gateway.settings import GatewaySettings


def main() -> int:
    try:
        settings = load_settings(GatewaySettings)
    except TunelabError as exc:
        print(f"tunelab-gateway: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, service="gateway")
    try:
        gateway = build_gateway(settings)
        gateway.start_http()
    except (TunelabError, OSError) as exc:
        logging.getLogger("tunelab.gateway").error("cannot start: %s", getattr(exc, "message", exc))
        return 1
    run_until_signal(gateway.grpc, settings.grace_period_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
