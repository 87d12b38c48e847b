"""Feed answers served from memory while fresh, for every request shape.

The cache the review proposed for the default answer, extended (see docs/architecture.md,
Review findings, P4).

The feed only changes when a poll commits, and many callers ask the same questions, so each
answer is kept serialized per normalised request; a hit sends the stored bytes as they are
(see `server.py`): building and serializing 1,000 items costs more than everything else.

Fresh means younger than `ttl` (at most 2 s) and no poll has committed new drops or closes
since it was built: the poller's NOTIFY on `contracts.FEED_CHANNEL` reaches `listen()`, which
clears the cache. If the listening connection is lost, the TTL alone bounds staleness until it
is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Hashable

import psycopg
from prometheus_client import CollectorRegistry, Counter

from services.feed import sql
from shared.db.urls import libpq_url

log = logging.getLogger(__name__)


# What a key costs beyond its text (the tuple, the dataclass, the dict slot), roughly.
_KEY_OVERHEAD = 512


def key_bytes(key: Hashable) -> int:
    """An estimate of a key's memory: its text plus a fixed overhead."""
    return len(repr(key)) + _KEY_OVERHEAD


class AnswerCache:
    """Serialized answers per normalised request, fresh for at most `ttl` seconds.

    The key is everything that shapes an answer: the whole validated query (its RPC, filters,
    limit, limit_capped and the decoded page cursor) and the boundary it was answered at. Least
    recently used answers go first once `max_bytes` (answers and keys) would be exceeded.
    """

    def __init__(self, ttl: float, registry: CollectorRegistry, max_bytes: int = 64 << 20) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._answers: OrderedDict[Hashable, tuple[bytes, float, int]] = OrderedDict()
        self._bytes = 0
        self._generation = 0
        self.requests = Counter(
            "dropwatch_feed_cache_requests",
            "Feed requests by RPC and cache result (hit or miss).",
            ["rpc", "result"],
            registry=registry,
        )
        self.invalidations = Counter(
            "dropwatch_feed_cache_invalidations",
            "Times a committed poll (NOTIFY) cleared the cache.",
            registry=registry,
        )
        for rpc in ("JustOpened", "StillOpen"):
            for result in ("hit", "miss"):
                self.requests.labels(rpc, result)
        self.listening = asyncio.Event()

    def get(self, rpc: str, key: Hashable) -> bytes | None:
        entry = self._answers.get(key)
        if entry is not None and time.monotonic() - entry[1] < self.ttl:
            self._answers.move_to_end(key)
            self.requests.labels(rpc, "hit").inc()
            return entry[0]
        self.requests.labels(rpc, "miss").inc()
        return None

    def generation(self) -> int:
        """Read before querying; `put` ignores an answer built across an invalidation."""
        return self._generation

    def put(self, key: Hashable, answer: bytes, generation: int, built_at: float) -> None:
        # The key counts too: a caller chooses its size (a page token's, a filter's).
        size = len(answer) + key_bytes(key)
        if generation != self._generation or self.ttl <= 0 or size > self.max_bytes:
            return
        old = self._answers.pop(key, None)
        if old is not None:
            self._bytes -= old[2]
        self._answers[key] = (answer, built_at, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _key, (_answer, _at, evicted) = self._answers.popitem(last=False)
            self._bytes -= evicted

    def invalidate(self) -> None:
        self._generation += 1
        self.forget()
        self.invalidations.inc()

    def forget(self) -> None:
        """Drop every answer (a new boundary: the old ones' answers can no longer be asked for,
        and would otherwise fill the byte bound before they are evicted)."""
        self._answers.clear()
        self._bytes = 0

    async def listen(self, database_url: str, stop: asyncio.Event) -> None:
        """Clear the cache on every NOTIFY; reconnect with backoff when the link drops."""
        conninfo = libpq_url(database_url)
        delay = 0.5
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(sql.LISTEN)
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
