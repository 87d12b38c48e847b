"""Run the simulator as a process: `python -m tools.simulator --port 8765`.

It logs one "simulator listening on URL" line (so a parent process can read the port when
--port 0 picked one) and exits 0 on SIGINT or SIGTERM after closing every connection.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from tools.simulator.dropworld import DEFAULT_ZONE
from tools.simulator.server import DROPS_MODEL, MODELS, Simulator
from tools.simulator.world import World

# Simulated minutes per real minute for local runs of the hash model. At speed 1 the 300-venue
# model already changes a few hundred slot states a minute across 28 buckets x 2 party sizes;
# 5 keeps the feed lively and shortens the quickest prime-time flips to about 6 real minutes.
DEFAULT_SPEED = 5.0
# The drops model runs in real time by default: its drops live seconds, as real ones do.
DEFAULT_DROPS_SPEED = 1.0

log = logging.getLogger("dropwatch.simulator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.simulator",
        description="A local stand-in for Resy's venue-search API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one")
    parser.add_argument("--venues", type=int, default=300, help="venues in the model")
    parser.add_argument("--seed", type=int, default=7, help="seed of the availability model")
    parser.add_argument("--api-key", default=None, help="require this Resy API key")
    parser.add_argument(
        "--world", type=Path, default=None, help="JSON of a seeded database's open drops to carry"
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default=DROPS_MODEL,
        help="availability model: releases and cancellations (drops, default) or the older "
        "stateless periods (hash)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=None,
        help="simulated seconds per real second (default "
        f"{DEFAULT_DROPS_SPEED:g} for drops, {DEFAULT_SPEED:g} for hash)",
    )
    parser.add_argument(
        "--start",
        type=_instant,
        default=None,
        help="drops model: the virtual instant at start, ISO-8601 with offset (default now)",
    )
    parser.add_argument(
        "--zone", default=DEFAULT_ZONE, help=f"market time zone (default {DEFAULT_ZONE})"
    )
    return parser


def _instant(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError("needs a UTC offset, e.g. 2026-12-07T08:58:00-05:00")
    return at


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.speed is None:
        args.speed = DEFAULT_DROPS_SPEED if args.model == DROPS_MODEL else DEFAULT_SPEED
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        world = World.load(args.world, args.seed) if args.world else None
        sim = Simulator(
            venues=args.venues,
            seed=args.seed,
            api_key=args.api_key,
            speed=args.speed,
            world=world,
            model=args.model,
            start_at=args.start,
            market_zone=args.zone,
        )
        url = sim.start(host=args.host, port=args.port)
    except (ValueError, OSError, KeyError) as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    if sim.world is not None:
        log.info(
            "carrying %d open slots of %d seeded venues", len(sim.world), len(sim.world.venues)
        )
    log.info("simulator listening on %s", url)
    try:
        stop.wait()
    finally:
        sim.stop()
    log.info("simulator stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
