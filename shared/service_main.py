"""Run a long-running service: settings, logging, database, signals, then its main coroutine.

Every service's `__main__` is the same few steps; they live here once. The main coroutine gets
the settings, the database URL and an event that SIGTERM / Ctrl-C sets.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shared.db.database import open_database
from shared.logs import configure_logging
from shared.settings import Settings, load_settings

S = TypeVar("S", bound=Settings)
Main = Callable[[S, str, asyncio.Event], Awaitable[None]]


def run_service(cls: type[S], main: Main[S], overrides: dict[str, Any]) -> int:
    """Load `cls` settings (with CLI overrides that are not None) and run `main` until stopped."""
    settings = load_settings(cls, **{k: v for k, v in overrides.items() if v is not None})
    configure_logging(settings.log_level, settings.secret_values())
    database = open_database(settings)
    try:
        asyncio.run(_until_signalled(main, settings, database.url))
    finally:
        database.close()
    return 0


async def _until_signalled(main: Main[S], settings: S, url: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await main(settings, url, stop)
