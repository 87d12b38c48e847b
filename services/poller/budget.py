"""One request budget per market, shared by every poller replica through PostgreSQL.

The market's budget is a token bucket row (`request_budget`). A replica claims a small grant
of whole tokens with one statement (`sql.CLAIM_BUDGET`, refilled by the database clock) and
spends it locally, so the statements scale with grants, not with requests, and N replicas
together never send more than `rate * T + burst` requests in T seconds. Local tokens expire
after `hold_seconds`: a replica cannot save up a grant and spend it in a later burst. Tokens a
stopping replica still holds are lost (the safe side). Why a token bucket row rather than
per-replica shares of live leases: docs/architecture.md, Release windows and the shared budget.

When the database does not answer, `acquire` returns False (the request is not sent and the
fetch fails like any other), after at most `claim_timeout_seconds`; for `failure_pause_seconds`
afterwards it returns False at once instead of queueing every request behind a dead database.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.poller import sql
from services.poller.settings import PollerSettings

log = logging.getLogger(__name__)


class Budget(Protocol):
    """What the provider needs of a request budget (ratelimit.RequestBudget or SharedBudget)."""

    async def acquire(self, deadline: float) -> bool: ...


@dataclass
class BudgetCounters:
    """This replica's figures since it started (for metrics: used vs configured)."""

    granted: int = 0  # acquire() that returned True: requests allowed
    refused: int = 0  # acquire() that returned False (deadline, database unavailable)
    claims: int = 0  # claim statements run
    claimed_tokens: int = 0  # tokens obtained from the market's bucket
    expired_tokens: int = 0  # local tokens dropped unused after hold_seconds
    failures: int = 0  # claims that failed (database unavailable or too slow)


@dataclass(frozen=True)
class Claim:
    """One claim's answer: whole tokens granted and what the market's bucket has left."""

    granted: int
    left: float


class SharedBudget:
    """At most `rate` requests per second on average for the market, bursts up to `burst`,
    whatever the number of replicas."""

    def __init__(
        self,
        engine: AsyncEngine,
        market: str,
        rate: float,
        burst: float | None = None,
        *,
        grant_seconds: float = 0.25,
        hold_seconds: float = 1.0,
        claim_timeout_seconds: float = 2.0,
        failure_pause_seconds: float = 1.0,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, float(burst if burst is not None else rate))
        # A grant: a quarter second's worth, at least one token, never more than the burst.
        self.grant = max(1, min(math.floor(self.burst), math.floor(rate * grant_seconds)))
        self.counters = BudgetCounters()
        self._engine = engine
        self._market = market
        self._hold = hold_seconds
        self._claim_timeout = claim_timeout_seconds
        self._failure_pause = failure_pause_seconds
        self._tokens = 0
        self._expires = 0.0
        self._failed_until = 0.0
        self._next_claim = 0.0
        self._losses = 0  # empty claims in a row
        self._lock = asyncio.Lock()

    async def acquire(self, deadline: float) -> bool:
        """Wait for a token; False if none can come before `deadline` (monotonic) or the
        database does not answer."""
        async with self._lock:  # callers in arrival order; one claim in flight per replica
            ok = await self._acquire(deadline)
        if ok:
            self.counters.granted += 1
        else:
            self.counters.refused += 1
        return ok

    async def _acquire(self, deadline: float) -> bool:
        while True:
            now = time.monotonic()
            if self._tokens and now >= self._expires:
                self.counters.expired_tokens += self._tokens
                self._tokens = 0
            if self._tokens:
                self._tokens -= 1
                return True
            if now < self._failed_until:
                return False
            start = max(now, self._next_claim)
            if start >= deadline:
                return False
            if start > now:
                await asyncio.sleep(start - now)
            # The claim is bounded by its own timeout, not the deadline: cancelled midway it
            # might have taken tokens nobody spends, and a late answer still serves the next.
            claim = await self._claim()
            if claim is None:
                return False
            self._tokens = claim.granted
            self._expires = time.monotonic() + self._hold
            # No claim before a whole grant can have accrued again (claims stay about one per
            # grant while the budget is in full use). A claim that came back empty lost to
            # another replica: wait longer, with jitter, so replicas fall out of lockstep.
            self._losses = 0 if claim.granted else min(self._losses + 1, 3)
            shortfall = max(0.0, self.grant - claim.left) / self.rate
            spread = random.uniform(1.0, 1.25 + self._losses)
            self._next_claim = time.monotonic() + shortfall * spread

    async def _claim(self) -> Claim | None:
        self.counters.claims += 1
        params = {"market": self._market, "rate": self.rate, "burst": self.burst}
        try:
            async with asyncio.timeout(self._claim_timeout), self._engine.begin() as conn:
                row = (await conn.execute(sql.CLAIM_BUDGET, {**params, "want": self.grant})).one()
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            self.counters.failures += 1
            self._failed_until = time.monotonic() + self._failure_pause
            log.warning("request budget unavailable (%s): requests refused", type(exc).__name__)
            return None
        granted = max(0, int(row.last_grant))
        self.counters.claimed_tokens += granted
        return Claim(granted, float(row.tokens))


def make_budget(settings: PollerSettings, engine: AsyncEngine) -> SharedBudget:
    """The market's shared budget at `DROPWATCH_REQUESTS_PER_SECOND` (for all replicas), with
    bursts up to `DROPWATCH_REQUEST_BURST`."""
    return SharedBudget(
        engine, settings.market, settings.requests_per_second, burst=settings.request_burst
    )
