"""One start-up path for every entry point: settings, logging, database, engine, dispose.

Every `python -m services.*`, every `dropwatch` command and the local stack begin and end the
same way; `started()` is that sequence once, and `run_service()` adds the signal handling the
long-running services need.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine

from shared.db.database import open_database
from shared.db.engine import make_engine
from shared.errors import DropwatchError
from shared.logs import configure_logging
from shared.settings import Settings, load_settings

S = TypeVar("S", bound=Settings)
Main = Callable[[S, str, asyncio.Event], Awaitable[None]]


@dataclass(frozen=True)
class Started(Generic[S]):
    """What an entry point gets: its settings, the database URL and a (lazy) sync engine."""

    settings: S
    url: str
    engine: Engine


@contextmanager
def started(cls: type[S], name: str, **overrides: Any) -> Iterator[Started[S]]:
    """Load `cls` settings (overrides that are None are ignored), configure logging, open the
    database (starting the embedded server when no URL is set) and make an engine named
    `name`; on exit dispose of the engine and stop the embedded server if this process
    started it. The engine connects only when used, so async services pay nothing for it."""
    settings = load_settings(cls, **{k: v for k, v in overrides.items() if v is not None})
    configure_logging(settings.log_level, settings.secret_values())
    database = open_database(settings)
    try:
        engine = make_engine(settings, name=name, url=database.url)
        try:
            yield Started(settings, database.url, engine)
        finally:
            engine.dispose()
    finally:
        database.close()


def run_service(cls: type[S], name: str, main: Main[S], **overrides: Any) -> int:
    """Start up, then run `main(settings, url, stop)` until SIGTERM or Ctrl-C sets `stop`."""
    with started(cls, name, **overrides) as up:
        asyncio.run(_until_signalled(main, up.settings, up.url))
    return 0


async def _until_signalled(main: Main[S], settings: S, url: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await main(settings, url, stop)


def exit_code(
    name: str,
    entry: Callable[[], int],
    on_error: Callable[[DropwatchError], None] | None = None,
) -> int:
    """Run an entry point; a `DropwatchError` (bad settings, database unreachable) is one line
    on stderr and exit code 2, not a traceback. `on_error` may report it elsewhere too."""
    try:
        return entry()
    except DropwatchError as exc:
        if on_error is not None:
            on_error(exc)
        print(f"dropwatch {name}: error: {exc}", file=sys.stderr)
        return 2
