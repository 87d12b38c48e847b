"""A scripted Resy venue search behind an httpx MockTransport, driven by the real ResyProvider.

In-process (no server thread), so a model-based test can run hundreds of polls quickly. It
answers the request the provider sends (party size, page, per_page) from a small state: which
slots are open for which party sizes, which party sizes are blocked (200 with no hits), how
start times are written, and a one-shot fault for the next request. Not a database mock: the
poller under test runs its real SQL against real PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import Engine, text

from services.poller.metrics import PollerMetrics
from services.poller.poll import PollContext
from services.poller.ratelimit import RequestBudget
from services.poller.resy import ResyProvider
from services.poller.settings import PollerSettings
from shared.db.buckets import ensure_live_buckets
from shared.db.engine import make_async_engine
from shared.slots import slot_id_for
from tests.poller.helpers import TODAY

ZONE = ZoneInfo("America/New_York")
SEATING = "Dining Room"

# How a start time is written: every form Resy has been seen to use.
FORMATS: dict[str, Callable[[dt.datetime], str]] = {
    "space": lambda t: t.strftime("%Y-%m-%d %H:%M:%S"),
    "t": lambda t: t.strftime("%Y-%m-%dT%H:%M:%S"),
    "minutes": lambda t: t.strftime("%Y-%m-%d %H:%M"),
    "fraction": lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.000"),
    "offset": lambda t: t.replace(tzinfo=ZONE).isoformat(),
    "utc": lambda t: t.replace(tzinfo=ZONE).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
}
FAULTS = ("server_error", "timeout", "bad_time", "missing_page", "repeat_venue")


def slot_key(venue: int, hhmm: str, day: dt.date = TODAY) -> str:
    """The poller's id of a scripted slot."""
    start = dt.datetime.combine(day, dt.time.fromisoformat(hhmm))
    return slot_id_for("resy", venue, start, SEATING)


@dataclass
class ScriptedResy:
    """What the provider answers; tests change the fields between polls."""

    day: dt.date = TODAY
    slots: dict[tuple[int, str], set[int]] = field(default_factory=dict)
    blocked: set[int] = field(default_factory=set)
    all_empty: bool = False
    time_format: str = "space"
    fault: str | None = None  # fires on every request of the next poll, then clears
    # Did the fault make the fetch fail? (missing_page needs a second page; repeat_venue never
    # fails it: the same slot seen twice is one slot.)
    fired: bool = False
    requests: int = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self.fired = self.fired or self.fault in ("server_error", "timeout", "bad_time")
        if self.fault == "server_error":
            return httpx.Response(500, json={"message": "boom"})
        if self.fault == "timeout":
            raise httpx.ReadTimeout("scripted timeout", request=request)
        body = json.loads(request.content)
        size = int(body["slot_filter"]["party_size"])
        page, per_page = int(body["page"]), int(body["per_page"])
        venues = self._venues(size)
        if self.fault == "bad_time":  # one unreadable start time among good ones
            venues = [*venues, (999, ["19:00"])]
        total_pages = max(1, -(-len(venues) // per_page))
        hits = [self._hit(v, times) for v, times in venues[(page - 1) * per_page : page * per_page]]
        if self.fault == "missing_page" and page >= 2:  # meta still claims the page
            hits, self.fired = [], True
        if self.fault == "repeat_venue" and page >= 2:  # page drift: a venue shown twice
            hits = [self._hit(*venues[(page - 1) * per_page - 1]), *hits]
        meta = {"page": page, "per_page": per_page, "total_pages": total_pages}
        return httpx.Response(
            200, json={"search": {"hits": hits, "nbHits": len(venues)}, "meta": meta}
        )

    def _venues(self, size: int) -> list[tuple[int, list[str]]]:
        if self.all_empty or size in self.blocked:
            return []
        by_venue: dict[int, list[str]] = {}
        for (venue, hhmm), sizes in sorted(self.slots.items()):
            if size in sizes:
                by_venue.setdefault(venue, []).append(hhmm)
        return sorted(by_venue.items())

    def _hit(self, venue: int, times: list[str]) -> dict[str, Any]:
        fmt = FORMATS[self.time_format]
        slots = []
        for hhmm in times:
            start = dt.datetime.combine(self.day, dt.time.fromisoformat(hhmm))
            raw = "tonight at seven" if venue == 999 else fmt(start)
            slots.append({"date": {"start": raw}, "config": {"type": SEATING}})
        return {"id": {"resy": venue}, "name": f"Venue {venue}", "availability": {"slots": slots}}


def reset_buckets(engine: Engine) -> None:
    """An empty event history and fresh live buckets (each hypothesis example starts here)."""
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE drop_events, open_slots, baseline_slots, discovery_buckets"))
        ensure_live_buckets(
            conn, market="nyc", today=TODAY, window_days=1, anchors=("15:00", "19:00")
        )


@asynccontextmanager
async def scripted_context(
    settings: PollerSettings, db_url: str, resy: ScriptedResy
) -> AsyncIterator[PollContext]:
    """A real poll context whose provider talks to `resy` instead of the network."""
    metrics = PollerMetrics()
    provider = ResyProvider(settings, RequestBudget(1000.0), transport=resy.transport())
    engine = make_async_engine(settings, name="poller-test", url=db_url)
    try:
        yield PollContext(settings, engine, provider, metrics, "scripted-owner")
    finally:
        await provider.aclose()
        await engine.dispose()
