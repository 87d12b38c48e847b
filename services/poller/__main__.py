"""`python -m services.poller`: run one poller replica until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from services.poller.app import run_poller
from services.poller.settings import PollerSettings
from shared.db.database import open_database
from shared.errors import DropwatchError
from shared.logs import configure_logging
from shared.settings import load_settings


def serve(metrics_port: int | None = None, health_port: int | None = None) -> int:
    overrides: dict[str, int] = {}
    if metrics_port is not None:
        overrides["metrics_port"] = metrics_port
    if health_port is not None:
        overrides["health_port"] = health_port
    settings = load_settings(PollerSettings, **overrides)
    configure_logging(settings.log_level, settings.secret_values())
    database = open_database(settings)
    try:
        asyncio.run(_main(settings, database.url))
    finally:
        database.close()
    return 0


async def _main(settings: PollerSettings, url: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_poller(settings, url, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.poller")
    parser.add_argument("--metrics-port", type=int, help="default DROPWATCH_METRICS_PORT (9101)")
    parser.add_argument("--health-port", type=int, help="default DROPWATCH_HEALTH_PORT (50052)")
    args = parser.parse_args(argv)
    try:
        return serve(args.metrics_port, args.health_port)
    except DropwatchError as exc:
        print(f"dropwatch poller: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
