"""The `dropwatch` command line: one entry point for operators and for `make run`.

Errors are one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from shared.db import migrate
from shared.db.engine import unavailable_as_error
from shared.errors import DropwatchError
from shared.settings import Settings
from shared.startup import started

log = logging.getLogger("dropwatch")


def _cmd_migrate(args: argparse.Namespace) -> int:
    migrate.migrate_database(args.revision)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from tools.up import run_up

    return run_up(free_ports=args.free_ports, plain=args.plain)


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.component == "poller":
        from services.poller.__main__ import serve as serve_poller

        return serve_poller(args.metrics_port, args.health_port)
    from services.feed.__main__ import serve as serve_feed

    return serve_feed(args.port, args.metrics_port)


def _cmd_maintenance(args: argparse.Namespace) -> int:
    from services.maintenance.__main__ import parse_now, run_once

    return run_once(parse_now(args.now))


def _cmd_seed(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from tools.seed import Shape, seed

    shape = Shape()  # the flags given replace its defaults
    if args.open_ratio is not None:
        shape = dataclasses.replace(shape, open_ratio=args.open_ratio)
    if args.recent is not None:
        shape = dataclasses.replace(shape, recent=args.recent)
    with started(Settings, "seed") as up, unavailable_as_error():
        migrate.upgrade(up.engine)
        with Progress(transient=True) as bar:
            task = bar.add_task("seeding days", total=None)
            result = seed(
                up.engine,
                up.settings,
                events=args.events,
                past_days=args.days,
                venues=args.venues,
                shape=shape,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    print(
        f"seeded {result.events:,} events ({result.open_drops:,} drops still open) over "
        f"{result.days} days in {result.seconds:.1f}s: {result.events_per_second:,.0f} events/s"
    )
    return 0


def _sizes(value: str) -> list[int]:
    try:
        sizes = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {value!r}") from None
    if not sizes or sizes[0] < 10_000:
        raise argparse.ArgumentTypeError("sizes must be at least 10000 events")
    return sizes


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.report import run_benchmarks

    repo = Path.cwd()
    if not (repo / "bench").is_dir():
        raise DropwatchError("run `dropwatch bench` from the repository root (bench/ not found)")
    return run_benchmarks(args.names, args.quick, Path(args.report), repo, args.sizes)


def _cmd_feed(args: argparse.Namespace) -> int:
    from cli import feed as client

    return client.call(args.kind, args, max_age=args.max_age, min_age=args.min_age)


def _cmd_watch(args: argparse.Namespace) -> int:
    from cli import watch

    return watch.watch(args) if args.kind == "watch" else watch.changes(args)


def _cmd_poll(args: argparse.Namespace) -> int:
    import asyncio

    from services.poller.app import poll_once
    from services.poller.settings import PollerSettings

    with started(PollerSettings, "poll") as up:
        outcomes = asyncio.run(poll_once(up.settings, up.url, args.bucket))
    if args.bucket and not outcomes:
        raise DropwatchError(f"bucket {args.bucket} does not exist or another poller holds it")
    for o in outcomes:
        print(
            f"{o.bucket_id}  {o.outcome:<20} new_drops={o.new_drops} closed={o.closed} "
            f"open={o.open_slots}"
        )
    print(f"{len(outcomes)} bucket(s) polled")
    return 0 if all(o.applied for o in outcomes) else 1


def _ratio(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return value


def _count(raw: str) -> int:
    if raw.strip() == "0":
        return 0
    return _positive(raw)


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


class _Parser(argparse.ArgumentParser):
    """Bad flags are one line on stderr (plus where to look), exit 2, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dropwatch",
        description="Catch restaurant-reservation drops: poller, feed and maintenance.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    p = sub.add_parser("migrate", help="bring the database schema to the newest revision")
    p.add_argument("--revision", default="head", help="target revision (default: head)")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser(
        "up", help="run the whole stack: PostgreSQL, simulator, poller, feed (Ctrl-C stops)"
    )
    p.add_argument(
        "--free-ports", action="store_true", help="pick free ports instead of the usual ones"
    )
    p.add_argument("--plain", action="store_true", help="plain log lines, no live view")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("serve", help="run one long-running component")
    p.add_argument("component", choices=["poller", "feed"], help="which component")
    p.add_argument("--port", type=int, help="feed: gRPC port (default 50051)")
    p.add_argument("--metrics-port", type=int, help="port of /metrics (0 = any free port)")
    p.add_argument("--health-port", type=int, help="poller: port of the gRPC health service")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "poll", help="poll every due bucket once (or one bucket, ignoring its cooldown)"
    )
    p.add_argument("--once", action="store_true", required=True, help="one pass, then exit")
    p.add_argument("--bucket", metavar="BUCKET_ID", help="only this bucket, e.g. 2026-12-03_19:00")
    p.set_defaults(func=_cmd_poll)

    p = sub.add_parser("seed", help="load realistic synthetic history (for benchmarks, demos)")
    p.add_argument("--events", type=_positive, required=True, help="about this many drop events")
    p.add_argument("--days", type=_positive, default=14, help="past days of history (default 14)")
    p.add_argument("--venues", type=_positive, default=2000, help="venues (default 2000)")
    p.add_argument(
        "--open-ratio",
        type=_ratio,
        help="drops still open per event (default 0.267, the benchmarks' data; 0 = history only)",
    )
    p.add_argument(
        "--recent",
        type=_count,
        help="open drops that opened in the last five minutes (default 2700)",
    )
    p.set_defaults(func=_cmd_seed)

    p = sub.add_parser("bench", help="run the benchmarks and write docs/performance.md")
    p.add_argument(
        "names",
        nargs="*",
        help="seed, poll_write, feed, feed_uncached, maintenance, detection, watch (default: all)",
    )
    size_choice = p.add_mutually_exclusive_group()
    size_choice.add_argument(
        "--quick", action="store_true", help="smaller sizes, minutes not half an hour"
    )
    size_choice.add_argument(
        "--sizes",
        type=_sizes,
        help="table sizes in events, e.g. 100000,1000000 (default: each benchmark's own)",
    )
    p.add_argument("--report", default="docs/performance.md", help="file to (re)write")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("maintenance", help="the daily aggregate-then-prune job")
    maint = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = maint.add_parser("run", help="run it once now")
    q.add_argument(
        "--now",
        help="date the run back to this ISO-8601 time (with a UTC offset); never more than"
        " DROPWATCH_MAX_CLOCK_SKEW_SECONDS ahead of the database clock",
    )
    q.set_defaults(func=_cmd_maintenance)

    from cli import windows

    windows.add_arguments(sub)

    from cli import feed as client
    from cli import watch

    p = sub.add_parser("feed", help="call the feed: just-opened, still-open, watch, changes")
    feed_sub = p.add_subparsers(dest="kind", required=True, metavar="LIST")
    q = feed_sub.add_parser("just-opened", help="drops opened in the last minutes")
    client.add_arguments(q)
    q.add_argument("--max-age", type=int, default=0, help="seconds (0 = server default 600)")
    q.set_defaults(func=_cmd_feed, min_age=None)
    q = feed_sub.add_parser(
        "still-open",
        help="drops open for at least --min-age seconds whose slot is still open",
    )
    client.add_arguments(q)
    q.add_argument(
        "--min-age",
        type=int,
        default=None,
        help="seconds (default 600, so a new stack lists nothing for ten minutes; 0 = all)",
    )
    q.set_defaults(func=_cmd_feed, max_age=0)
    q = feed_sub.add_parser("watch", help="print drops as they open and close, until Ctrl-C")
    watch.add_watch_arguments(q)
    q.set_defaults(func=_cmd_watch)
    q = feed_sub.add_parser("changes", help="the changes after a cursor, as one page")
    watch.add_changes_arguments(q)
    q.set_defaults(func=_cmd_watch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(argv)
    except BrokenPipeError:
        # The reader went away (`dropwatch feed just-opened | head -1`): it has what it wanted.
        # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as if killed by SIGPIPE, like other commands in a pipeline


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BrokenPipeError:
        raise
    except DropwatchError as exc:
        print(f"dropwatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line by default, the traceback on request
        if os.environ.get("DROPWATCH_DEBUG"):
            raise
        print(
            f"dropwatch: unexpected {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            " (set DROPWATCH_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
