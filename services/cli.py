"""The `dropwatch` command line: one entry point for operators and for `make run`.

Errors are one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from shared.db import migrate
from shared.db.database import open_database
from shared.db.engine import make_engine
from shared.errors import DropwatchError
from shared.logs import configure_logging
from shared.settings import Settings, load_settings

log = logging.getLogger("dropwatch")


def _cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(Settings)
    configure_logging(settings.log_level, settings.secret_values())
    database = open_database(settings)
    try:
        engine = make_engine(settings, name="migrate", url=database.url)
        try:
            migrate.upgrade(engine, args.revision)
            print(f"database at revision {migrate.current_revision(engine)}")
        finally:
            engine.dispose()
    finally:
        database.close()
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    settings = load_settings(Settings)
    configure_logging(settings.log_level, settings.secret_values())
    database = open_database(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        engine = make_engine(settings, name="up", url=database.url)
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
        print(f"PostgreSQL ready ({settings.display_database_url()}), schema migrated.")
        if database.server is not None:
            print(f"  connect with: psql '{database.url}'")
        print("Press Ctrl-C to stop.", flush=True)
        stop.wait()
    finally:
        database.close()
        print("stopped.", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dropwatch",
        description="Catch restaurant-reservation drops: poller, feed and maintenance.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="bring the database schema to the newest revision")
    p.add_argument("--revision", default="head", help="target revision (default: head)")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("up", help="start the local stack (PostgreSQL + migrations)")
    p.set_defaults(func=_cmd_up)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except DropwatchError as exc:
        print(f"dropwatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
