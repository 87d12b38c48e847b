"""The feed benchmark in-process: its requests, the original read pattern, and where the feed's
own time goes (the real code, no gRPC)."""

from __future__ import annotations

import datetime as dt
import inspect
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from bench.harness import log, median
from services.feed import sql as feed_sql
from services.feed import store
from services.feed.cache import AnswerCache
from services.feed.paging import PageTokens
from services.feed.request import FeedQuery, from_just_opened, from_still_open
from services.feed.servicer import FeedServicer
from services.feed.settings import FeedSettings
from shared.db.buckets import market_today
from shared.db.engine import make_async_engine
from shared.db.models import EVENT_NEW_DROP, DropEvent
from shared.gen.dropwatch.feed.v1 import feed_pb2

MAX_SAMPLES = 50
# key, title, JustOpened?, filtered?, p50 target at concurrency 1 (ms)
SCENARIOS = (
    ("jo_default", "JustOpened default", True, False, 5.0),
    ("jo_filtered", "JustOpened filtered", True, True, 5.0),
    ("so_default", "StillOpen limit=1000", False, False, 15.0),
    ("so_filtered", "StillOpen filtered", False, True, 15.0),
)


@dataclass(frozen=True)
class Ask:
    """One request as every side sees it: the gRPC message, the feed's query, the original's
    parameters (filtered: party size 2 and the next three days, market time)."""

    key: str
    title: str
    target_ms: float
    message: feed_pb2.JustOpenedRequest | feed_pb2.StillOpenRequest
    query: FeedQuery
    just_opened: bool
    dates: frozenset[dt.date]
    sizes: frozenset[int]


def asks(today: dt.date) -> list[Ask]:
    out = []
    for key, title, jo, filtered, target in SCENARIOS:
        dates = [today + dt.timedelta(days=d) for d in ((1, 2, 3) if filtered else ())]
        f = feed_pb2.FeedFilter(
            party_sizes=[2] if filtered else [], reservation_dates=[d.isoformat() for d in dates]
        )
        if jo:
            m: Any = feed_pb2.JustOpenedRequest(filter=f)
            query = from_just_opened(m)
        else:
            m = feed_pb2.StillOpenRequest(filter=f, limit=1000)
            query = from_still_open(m)
        sizes = frozenset({2} if filtered else ())
        out.append(Ask(key, title, target, m, query, jo, frozenset(dates), sizes))
    return out


def original_statement(ask: Ask, bucket_ids: list[str], now: dt.datetime) -> Any:
    """The newest NEW_DROPs of the live buckets, through the ORM."""
    stmt = select(DropEvent).where(
        DropEvent.event_type == EVENT_NEW_DROP, DropEvent.bucket_id.in_(bucket_ids)
    )
    if ask.just_opened:
        stmt = stmt.where(DropEvent.opened_at >= now - dt.timedelta(minutes=5))
    stmt = stmt.order_by(DropEvent.opened_at.desc())
    return stmt.limit(5000 if ask.just_opened else 10_000)


def original_request(
    engine: Engine, ask: Ask, bucket_ids: list[str], today: dt.date
) -> list[float]:
    """One request the original way: query, open snapshot (read from open_slots here; the
    original parsed a JSON snapshot per bucket), then filters and dedupe in Python. Returns
    the ms of each part, rows read and items."""
    now = dt.datetime.now(dt.UTC)
    limit, edge = (500, None) if ask.just_opened else (1000, now - dt.timedelta(seconds=600))
    times = [time.perf_counter()]
    with Session(engine) as db:
        events = db.scalars(original_statement(ask, bucket_ids, now)).all()
        times.append(time.perf_counter())
        sql = "SELECT bucket_id, slot_id FROM open_slots WHERE bucket_id = ANY(:ids)"
        open_now = {(r[0], r[1]) for r in db.execute(text(sql), {"ids": bucket_ids})}
        times.append(time.perf_counter())
        seen: set[tuple[int, dt.date]] = set()
        for e in events:  # newest first: the first per (venue, date) wins
            if (e.bucket_id, e.slot_id) not in open_now or e.slot_date < today:
                continue
            if (edge is not None and e.opened_at >= edge) or (
                ask.dates and e.slot_date not in ask.dates
            ):
                continue
            if (ask.sizes and ask.sizes.isdisjoint(e.party_sizes)) or (
                (e.venue_id, e.slot_date) in seen
            ):
                continue
            seen.add((e.venue_id, e.slot_date))
            if len(seen) >= limit:
                break
        times.append(time.perf_counter())
    parts = [(b - a) * 1000 for a, b in itertools.pairwise(times)]
    return [*parts, len(events), len(seen)]


def measure_original(
    engine: Engine, asks: list[Ask], bucket_ids: list[str], today: dt.date, duration: float
) -> list[dict[str, float]]:
    """Per request, medians of ms (whole, query, snapshot, python), the query's server time,
    rows read and items."""
    out = []
    for ask in asks:
        original_request(engine, ask, bucket_ids, today)  # warm-up
        runs: list[list[float]] = []
        until = time.perf_counter() + duration
        while len(runs) < 3 or (time.perf_counter() < until and len(runs) < MAX_SAMPLES):
            runs.append(original_request(engine, ask, bucket_ids, today))
        servers = []
        with engine.connect() as conn:
            for _ in range(3):
                stmt = original_statement(ask, bucket_ids, dt.datetime.now(dt.UTC))
                sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
                plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql).scalar_one()
                servers.append(float(plan[0]["Execution Time"]))
        found = {
            n: median([r[i] for r in runs]) for i, n in enumerate(("query", "snapshot", "python"))
        }
        found.update(ms=median([sum(r[:3]) for r in runs]), server=median(servers))
        out.append({**found, "rows": runs[-1][3], "items": runs[-1][4]})
        log(f"original {ask.title}: p50 {found['ms']:.1f} ms over {len(runs)} requests")
    return out


async def _calls(n: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """The median ms of `n` calls of `fn` (awaited if it returns an awaitable), its last result."""
    times, result = [], None
    for _ in range(n):
        started = time.perf_counter()
        result = fn()
        result = await result if inspect.isawaitable(result) else result
        times.append((time.perf_counter() - started) * 1000)
    return median(times), result


async def measure_breakdown(url: str, asks: list[Ask], n: int = 30) -> list[dict[str, float]]:
    """Medians of `n` in-process calls of each part of the real code (the feed's settings and
    custom plans, no gRPC)."""
    settings = FeedSettings()
    custom = {"plan_cache_mode": "force_custom_plan"}  # as the feed runs
    engine = make_async_engine(settings, name="bench-feed", url=url, server_settings=custom)
    cache = AnswerCache(settings.cache_ttl_seconds, CollectorRegistry())
    servicer = FeedServicer(settings, engine, PageTokens(b"bench"), cache)
    no_deadline: Any = SimpleNamespace(time_remaining=lambda: None)  # all `_answer` asks of it
    out = []
    for ask in asks:
        make: Any = feed_pb2.JustOpenedResponse if ask.just_opened else feed_pb2.StillOpenResponse
        boundary = await servicer._take_boundary()  # shared by first pages, as served
        today, q = market_today(settings.zone, boundary.at), ask.query
        handler = lambda: servicer._answer(q, boundary, None, no_deadline, make())  # noqa: B023, E731
        found: dict[str, float] = {}
        found["handler"], answer = await _calls(n, handler)
        async with engine.connect() as conn:
            fetch = lambda: store.fetch_feed(conn, q, today=today, boundary=boundary, cursor=None)  # noqa: B023, E731
            found["sql"], rows = await _calls(n, fetch)
            explain = text("EXPLAIN (ANALYZE, FORMAT JSON) " + feed_sql.build_sql(q, keyset=False))
            params = feed_sql.params(q, today, boundary, None)
            plans = [(await conn.execute(explain, params)).scalar_one()[0] for _ in range(3)]
        found["server"] = median([float(p["Execution Time"]) for p in plans])
        found["planning"] = median([float(p["Planning Time"]) for p in plans])
        raw, page = answer.SerializeToString(), rows[: q.limit]
        found["build"] = (await _calls(n, lambda: servicer._fill(make(), page, q)))[0]  # noqa: B023
        found["serialize"] = (await _calls(n, answer.SerializeToString))[0]
        found["parse"] = (await _calls(n, lambda: make().ParseFromString(raw)))[0]  # noqa: B023
        out.append(found)
        log(f"in-process {ask.title}: handler {found['handler']:.2f} ms, SQL {found['sql']:.2f}")
    await engine.dispose()
    return out
