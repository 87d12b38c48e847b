"""One request budget per poller replica, shared by every bucket in flight."""

from __future__ import annotations

import asyncio
import time


class RequestBudget:
    """A token bucket: at most `rate` requests per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int | None = None) -> None:
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, int(rate)))
        self._tokens = self.burst
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, deadline: float) -> bool:
        """Wait for a token; False if it cannot come before `deadline` (monotonic)."""
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            wait = 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate
            if now + wait > deadline:
                return False
            self._tokens -= 1
            if wait:
                # Holding the lock while waiting keeps callers in arrival order.
                await asyncio.sleep(wait)
            return True
