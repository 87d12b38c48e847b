"""`python -m services.feed`: serve the feed until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.feed.server import start_feed
from services.feed.settings import FeedSettings
from shared.metrics_http import serve_metrics
from shared.startup import exit_code, run_service


def serve(port: int | None = None, metrics_port: int | None = None) -> int:
    return run_service(FeedSettings, "feed", _main, feed_port=port, metrics_port=metrics_port)


async def _main(settings: FeedSettings, url: str, stop: asyncio.Event) -> None:
    feed = await start_feed(settings, url)
    metrics = serve_metrics(feed.registry, settings.metrics_port, settings.bind_host)
    try:
        await stop.wait()
    finally:
        await feed.stop(settings.shutdown_grace_seconds)
        metrics.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.feed")
    parser.add_argument("--port", type=int, help="gRPC port (default DROPWATCH_FEED_PORT, 50051)")
    parser.add_argument("--metrics-port", type=int, help="default DROPWATCH_METRICS_PORT (9102)")
    args = parser.parse_args(argv)
    return exit_code("feed", lambda: serve(args.port, args.metrics_port))


if __name__ == "__main__":
    sys.exit(main())
