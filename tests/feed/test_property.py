"""Property: for random drops and random requests, the feed matches a plain-Python model.

The drops are written by the poller's own store functions (through `Seeder`). The model is
built only from what the test itself opened and closed, and when, never from the database.
It applies the contract's rules in the obvious way: what is open now, inside the time window,
through every filter, then newest per (venue, date) among the rows that passed, newest first.
One database and one feed server serve every example: each example first clears the state.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from services.feed import limits
from services.feed.server import FeedServer
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.feed.conftest import NOW, TODAY
from tests.seeding import Seeder, SeedSlot

Stub = feed_pb2_grpc.FeedServiceStub
T = TypeVar("T")
Response = feed_pb2.JustOpenedResponse | feed_pb2.StillOpenResponse

LIVE_DAYS = tuple(TODAY + dt.timedelta(days=n) for n in range(3))
START_TIMES = tuple(f"{m // 60:02d}:{m % 60:02d}" for m in range(13 * 60, 21 * 60 + 1, 15))
SIZE_SETS = ((2,), (4,), (6,), (2, 4), (2, 6), (4, 6), (2, 4, 6))
# Ages (seconds before NOW) on and around every window edge the requests below use.
EDGE_AGES = (
    *(0, 1, 59, 60, 61, 299, 300, 301, 599, 600, 601),
    *(899, 900, 901, 1199, 1200, 1201, 3599, 3600, 3601),
)
# Filter values: inside and outside the data (a past day, a day without drops, odd times).
FILTER_DAYS = (*LIVE_DAYS, TODAY - dt.timedelta(days=1), TODAY + dt.timedelta(days=5))
FILTER_TIMES = (*START_TIMES, "00:00", "12:59", "13:07", "17:59", "20:59", "23:59")
MAX_PAGES = 200

# Buckets are recreated by `Seeder.setup` (every poll-state column back to its default,
# whatever the poller keeps there, and baselined for every request kind).
RESET = (
    "DELETE FROM drop_events",
    "DELETE FROM discovery_buckets",  # open_slots and baseline_slots cascade
)


def ago(seconds: int) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


@dataclass(frozen=True)
class Life:
    """One slot's history: opened, maybe closed later, maybe reopened after that."""

    slot: SeedSlot
    opened: int  # seconds before NOW
    closed: int | None = None
    reopened: int | None = None


@dataclass(frozen=True)
class OpenDrop:
    """A drop the model says is open now; `seq` orders drops the way event ids do."""

    slot: SeedSlot
    anchor: str
    opened_at: dt.datetime
    seq: int
    added: tuple[tuple[int, dt.datetime], ...] = ()  # sizes bookable since later, and when
    writes: int = 0  # party-size changes since it opened: each one rewrites its row

    def size_opened(self, size: int) -> dt.datetime:
        """When parties of `size` could first book it (a size added later opened then)."""
        return dict(self.added).get(size, self.opened_at)


@dataclass(frozen=True)
class Ask:
    """A request: everything but the limit and the page token."""

    kind: str  # "just_opened" | "still_open"
    age: int | None  # max_age_seconds / min_age_seconds; None = leave min_age_seconds unset
    filter: feed_pb2.FeedFilter
    limits: tuple[int, ...]  # page i uses limits[i % len(limits)]; 0 = the default

    def request(
        self, page: int, token: str
    ) -> feed_pb2.JustOpenedRequest | feed_pb2.StillOpenRequest:
        limit = self.limits[page % len(self.limits)]
        if self.kind == "just_opened":
            return feed_pb2.JustOpenedRequest(
                filter=self.filter, max_age_seconds=self.age or 0, limit=limit, page_token=token
            )
        request = feed_pb2.StillOpenRequest(filter=self.filter, limit=limit, page_token=token)
        if self.age is not None:
            request.min_age_seconds = self.age
        return request

    def applied_limit(self, page: int) -> int:
        limit = self.limits[page % len(self.limits)]
        if limit:
            return limit
        if self.kind == "just_opened":
            return limits.JUST_OPENED_DEFAULT_LIMIT
        return limits.STILL_OPEN_DEFAULT_LIMIT


# ---------------------------------------------------------------- strategies


def ages(low: int, high: int) -> st.SearchStrategy[int]:
    """Anywhere in [low, high], often recent (inside the windows), often on a window edge."""
    any_age = st.integers(low, high) | st.integers(low, min(high, 1300))
    edges = [a for a in EDGE_AGES if low <= a <= high]
    return any_age | st.sampled_from(edges) if edges else any_age


@st.composite
def lives(draw: st.DrawFn) -> list[Life]:
    size = draw(st.integers(0, 25))
    keys = draw(
        st.lists(
            st.tuples(st.integers(1, 6), st.sampled_from(LIVE_DAYS), st.sampled_from(START_TIMES)),
            min_size=size,
            max_size=size,
        )
    )
    keys = list(dict.fromkeys(keys))  # one life per slot identity (venue, day, start, seating)
    out = []
    for venue, day, start in keys:
        slot = SeedSlot(venue, day, start, party_sizes=draw(st.sampled_from(SIZE_SETS)))
        opened = draw(ages(0, 4000))
        closed = reopened = None
        if opened >= 2 and draw(st.booleans()):
            closed = draw(ages(1, opened - 1))  # strictly after opening, strictly before NOW
            if draw(st.booleans()):
                reopened = draw(ages(0, closed - 1))
        out.append(Life(slot, opened, closed, reopened))
    return out


def sometimes(values: st.SearchStrategy[list[T]]) -> st.SearchStrategy[list[T]]:
    """A filter is set in about a third of the requests, so answers are seldom empty."""
    return st.sampled_from((False, False, True)).flatmap(lambda on: values if on else st.just([]))


@st.composite
def filters(draw: st.DrawFn) -> feed_pb2.FeedFilter:
    bound = st.sampled_from((None, None, *FILTER_TIMES))
    time_from, time_to = draw(bound), draw(bound)
    if time_from is not None and time_to is not None and time_from > time_to:
        time_from, time_to = time_to, time_from
    days = draw(sometimes(st.lists(st.sampled_from(FILTER_DAYS), min_size=1, max_size=3)))
    return feed_pb2.FeedFilter(
        reservation_dates=[d.isoformat() for d in days],
        party_sizes=draw(
            sometimes(st.lists(st.sampled_from((1, 2, 3, 4, 6, 8)), min_size=1, max_size=3))
        ),
        time_from=time_from or "",
        time_to=time_to or "",
        time_slots=draw(
            sometimes(st.lists(st.sampled_from(("15:00", "19:00")), min_size=1, max_size=2))
        ),
        venue_ids=draw(sometimes(st.lists(st.integers(1, 8), min_size=1, max_size=3))),
        all_slots_per_venue=draw(st.booleans()),
    )


@st.composite
def asks(draw: st.DrawFn) -> Ask:
    kind = draw(st.sampled_from(("just_opened", "still_open")))
    if kind == "just_opened":
        age: int | None = draw(st.sampled_from((0, 60, 900, 3600)))
    else:
        age = draw(st.sampled_from((None, 0, 300, 1200)))
    page_limits = draw(st.lists(st.integers(0, 8), min_size=1, max_size=3))
    return Ask(kind, age, draw(filters()), tuple(page_limits))


# ---------------------------------------------------------------- driving the system


async def reset(seeder: Seeder) -> None:
    async with seeder.engine.begin() as conn:
        for statement in RESET:
            await conn.execute(text(statement))
    await seeder.setup()
    seeder.state.clear()


async def play(seeder: Seeder, history: Iterable[Life]) -> list[OpenDrop]:
    """Apply every open/close in time order, one slot per poll; return what is open now.

    One slot per poll and a single writer make event ids increase with the order of the
    opening polls, so that order (`seq`) is the model's tie-break for equal opened_at.
    """
    ops: list[tuple[int, int, str, Life]] = []
    for n, life in enumerate(history):
        ops.append((life.opened, n, "open", life))
        if life.closed is not None:
            ops.append((life.closed, n, "close", life))
        if life.reopened is not None:
            ops.append((life.reopened, n, "open", life))
    ops.sort(key=lambda op: (-op[0], op[1]))  # oldest first
    current: dict[str, OpenDrop] = {}
    for seq, (seconds, _, action, life) in enumerate(ops):
        slot = life.slot
        if action == "open":
            await seeder.open([slot], at=ago(seconds))
            anchor = seeder.bucket_of(slot).split("_")[1]
            current[slot.slot_id] = OpenDrop(slot, anchor, ago(seconds), seq)
        else:
            await seeder.close([slot], at=ago(seconds))
            del current[slot.slot_id]
    return list(current.values())


async def walk(stub: Stub, ask: Ask) -> list[feed_pb2.FeedItem]:
    """Every page of one query, checking each page's own promises on the way."""
    items: list[feed_pb2.FeedItem] = []
    token = ""
    for page in range(MAX_PAGES):
        request = ask.request(page, token)
        reply: Response
        if isinstance(request, feed_pb2.JustOpenedRequest):
            reply = await stub.JustOpened(request)
        else:
            reply = await stub.StillOpen(request)
        limit = ask.applied_limit(page)
        assert reply.applied_limit == limit, (page, reply.applied_limit)
        assert not reply.limit_capped
        assert len(reply.items) <= limit, (page, len(reply.items))
        assert reply.truncated == bool(reply.next_page_token), page
        if reply.truncated:
            assert len(reply.items) == limit, (page, len(reply.items))
        items += reply.items
        if not reply.next_page_token:
            return items
        token = reply.next_page_token
    raise AssertionError(f"more than {MAX_PAGES} pages")


# ---------------------------------------------------------------- the model


def _time(raw: str) -> dt.time:
    return dt.time.fromisoformat(raw)


def reference(open_now: list[OpenDrop], ask: Ask, now: dt.datetime = NOW) -> list[OpenDrop]:
    """The answer the contract promises at `now` (the answer's boundary), every page joined."""
    f = ask.filter
    if ask.kind == "just_opened":
        edge = now - dt.timedelta(seconds=ask.age or limits.DEFAULT_MAX_AGE_SECONDS)
    else:
        age = limits.DEFAULT_MAX_AGE_SECONDS if ask.age is None else ask.age
        edge = now - dt.timedelta(seconds=age)

    def passes(d: OpenDrop) -> bool:
        slot = d.slot
        if slot.day < TODAY or d.opened_at > now:
            return False
        if f.party_sizes:  # windowed per requested size: a size added later opened then
            wanted = set(f.party_sizes) & set(slot.party_sizes)
            recent = any(d.size_opened(size) >= edge for size in wanted)
            if not wanted or recent != (ask.kind == "just_opened"):
                return False
        elif (d.opened_at >= edge) != (ask.kind == "just_opened"):
            return False
        if f.reservation_dates and slot.day.isoformat() not in f.reservation_dates:
            return False
        start = _time(slot.start)
        if f.time_from and start < _time(f.time_from):
            return False
        if f.time_to and start > _time(f.time_to):
            return False
        if f.time_slots and d.anchor not in f.time_slots:
            return False
        return not (f.venue_ids and slot.venue_id not in f.venue_ids)

    rows = sorted(
        (d for d in open_now if passes(d)), key=lambda d: (d.opened_at, d.seq), reverse=True
    )
    if f.all_slots_per_venue:
        return rows
    seen: set[tuple[int, dt.date]] = set()
    newest = []
    for d in rows:  # newest first, so the first row of a (venue, date) is its newest
        key = (d.slot.venue_id, d.slot.day)
        if key not in seen:
            seen.add(key)
            newest.append(d)
    return newest


Shown = tuple[int, str, str, str, tuple[int, ...], dt.datetime]


def shown(item: feed_pb2.FeedItem) -> Shown:
    return (
        item.venue.id,
        item.reservation_date,
        item.slot_time,
        item.time_slot,
        tuple(item.party_sizes),
        item.opened_at.ToDatetime(dt.UTC),
    )


def modelled(d: OpenDrop) -> Shown:
    s = d.slot
    return (
        s.venue_id,
        s.day.isoformat(),
        s.start,
        d.anchor,
        tuple(sorted(s.party_sizes)),
        d.opened_at,
    )


# ---------------------------------------------------------------- the property


# A pass takes a few seconds; a failure is shrunk for up to a few minutes (every step
# replays polls), so the usual 120 s timeout would cut the shrink short.
@pytest.mark.slow
@pytest.mark.timeout(600)
@settings(
    max_examples=40,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=lives(), questions=st.lists(asks(), min_size=1, max_size=4))
async def test_feed_equals_the_reference_model(
    seeder: Seeder, feed: FeedServer, stub: Stub, history: list[Life], questions: list[Ask]
) -> None:
    await reset(seeder)
    open_now = await play(seeder, history)
    feed.servicer.cache.invalidate()  # the NOTIFY of the last poll may not have landed yet
    for ask in questions:
        items = await walk(stub, ask)
        assert len({i.event_id for i in items}) == len(items), "an item repeated across pages"
        got = [shown(i) for i in items]
        want = [modelled(d) for d in reference(open_now, ask)]
        assert got == want, ask
