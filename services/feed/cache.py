"""The default, unfiltered JustOpened answer, served from memory while fresh (review P4).

It is kept serialized: a hit sends the stored bytes as they are (see `server.py`), because
serializing 500 items on every call would cost more than everything else a hit does.

Fresh means younger than `ttl` (at most 2 s) and no poll has committed new drops or closes
since it was built: the poller's `pg_notify('dropwatch_feed', ...)` reaches `listen()`, which
clears the cache. If the listening connection is lost, the TTL alone bounds staleness until it
is back.
"""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "dropwatch_feed"


class DefaultAnswerCache:
    def __init__(self, ttl: float, registry: CollectorRegistry) -> None:
        self.ttl = ttl
        self._answer: bytes | None = None
        self._built_at = 0.0
        self._generation = 0
        self.requests = Counter(
            "dropwatch_feed_cache_requests",
            "Default JustOpened requests by cache result (hit or miss).",
            ["result"],
            registry=registry,
        )
        self.invalidations = Counter(
            "dropwatch_feed_cache_invalidations",
            "Times a committed poll (NOTIFY) cleared the cache.",
            registry=registry,
        )
        self.requests.labels("hit")
        self.requests.labels("miss")
        self.listening = asyncio.Event()

    def get(self) -> bytes | None:
        if self._answer is not None and time.monotonic() - self._built_at < self.ttl:
            self.requests.labels("hit").inc()
            return self._answer
        self.requests.labels("miss").inc()
        return None

    def generation(self) -> int:
        """Read before querying; `put` ignores an answer built across an invalidation."""
        return self._generation

    def put(self, answer: bytes, generation: int, built_at: float) -> None:
        if generation == self._generation:
            self._answer, self._built_at = answer, built_at

    def invalidate(self) -> None:
        self._generation += 1
        self._answer = None
        self.invalidations.inc()

    async def listen(self, database_url: str, stop: asyncio.Event) -> None:
        """Clear the cache on every NOTIFY; reconnect with backoff when the link drops."""
        conninfo = (
            make_url(database_url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        delay = 0.5
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.invalidate()  # we may have missed notifications while away
                    self.listening.set()
                    delay = 0.5
                    async for _note in conn.notifies():
                        self.invalidate()
                        if stop.is_set():
                            break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: TTL still bounds staleness
                self.listening.clear()
                log.warning("cache listener disconnected (%s); retrying", type(exc).__name__)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                delay = min(delay * 2, 10)
