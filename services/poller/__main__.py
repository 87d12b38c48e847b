"""`python -m services.poller`: run one poller replica until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import sys

from services.poller.app import run_poller
from services.poller.settings import PollerSettings
from shared.startup import exit_code, run_service


def serve(metrics_port: int | None = None, health_port: int | None = None) -> int:
    return run_service(
        PollerSettings, "poller", run_poller, metrics_port=metrics_port, health_port=health_port
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.poller")
    parser.add_argument("--metrics-port", type=int, help="default DROPWATCH_METRICS_PORT (9101)")
    parser.add_argument("--health-port", type=int, help="default DROPWATCH_HEALTH_PORT (50052)")
    args = parser.parse_args(argv)
    return exit_code("poller", lambda: serve(args.metrics_port, args.health_port))


if __name__ == "__main__":
    sys.exit(main())
