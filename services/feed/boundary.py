"""One boundary for every first page answered in the same moment.

A boundary (`paging.Boundary`) is where an answer's windows are measured from and which
writes it sees (commit order). JustOpened and StillOpen split the same data at the same edge
only if they use the same boundary: taken per request, two answers (one of them cached, up to
the cache TTL old) could overlap or leave a gap. So the boundary is shared, and renewed when
the data changes (a poll's NOTIFY moves the cache generation) or when it is `lifetime` old;
the cache keys answers by it, so no answer of an older boundary is served after a renewal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from services.feed.paging import Boundary


class Boundaries:
    """The current boundary and when it was taken (for one server)."""

    def __init__(self, lifetime: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.monotonic = monotonic
        self._current: tuple[Boundary, int, float] | None = None
        self._lock = asyncio.Lock()

    async def current(self, generation: int, take: Callable[[], Awaitable[Boundary]]) -> Boundary:
        """The shared boundary, renewed (with `take`) if stale; `generation` is the cache's."""
        async with self._lock:
            entry = self._current
            if (
                entry is None
                or entry[1] != generation
                or self.monotonic() - entry[2] >= self.lifetime
            ):
                entry = self._current = (await take(), generation, self.monotonic())
            return entry[0]
