"""The feed benchmark in-process: the original read pattern, and where the feed's own time goes
(the real code, no gRPC)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from bench.harness import log, median
from services.feed import sql as feed_sql
from services.feed import store
from services.feed.cache import AnswerCache
from services.feed.paging import PageTokens
from services.feed.request import FeedQuery
from services.feed.servicer import FeedServicer
from services.feed.settings import FeedSettings
from shared.db.buckets import market_today
from shared.db.engine import make_async_engine
from shared.db.models import EVENT_NEW_DROP, DropEvent
from shared.gen.dropwatch.feed.v1 import feed_pb2

MAX_SAMPLES = 50


@dataclass(frozen=True)
class Ask:
    """One request as both sides see it: the feed's query and the original's parameters."""

    title: str
    query: FeedQuery
    just_opened: bool
    dates: frozenset[dt.date]
    sizes: frozenset[int]


@dataclass
class Original:
    ms: list[float]
    query_ms: list[float]  # the ORM DropEvent query, objects built
    snapshot_ms: list[float]  # the open (bucket_id, slot_id) set
    python_ms: list[float]  # still-open, filters, dedupe
    server_ms: float  # EXPLAIN ANALYZE execution time of its query
    rows: int
    items: int


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
) -> tuple[float, float, float, int, int]:
    """One request the original way: query, open snapshot (read from open_slots here; the
    original parsed a JSON snapshot per bucket), then filters and dedupe in Python."""
    now = dt.datetime.now(dt.UTC)
    limit, edge = (500, None) if ask.just_opened else (1000, now - dt.timedelta(seconds=600))
    started = time.perf_counter()
    with Session(engine) as db:
        events = db.scalars(original_statement(ask, bucket_ids, now)).all()
        queried = time.perf_counter()
        sql = "SELECT bucket_id, slot_id FROM open_slots WHERE bucket_id = ANY(:ids)"
        open_now = {(r[0], r[1]) for r in db.execute(text(sql), {"ids": bucket_ids})}
        loaded = time.perf_counter()
        seen: set[tuple[int, dt.date]] = set()
        for e in events:  # newest first: the first per (venue, date) wins
            if (e.bucket_id, e.slot_id) not in open_now or e.slot_date < today:
                continue
            if (edge is not None and e.opened_at >= edge) or (
                ask.dates and e.slot_date not in ask.dates
            ):
                continue
            if (ask.sizes and ask.sizes.isdisjoint(e.party_sizes)) or (
                e.venue_id,
                e.slot_date,
            ) in seen:
                continue
            seen.add((e.venue_id, e.slot_date))
            if len(seen) >= limit:
                break
        done = time.perf_counter()
    return (
        (queried - started) * 1000,
        (loaded - queried) * 1000,
        (done - loaded) * 1000,
        len(events),
        len(seen),
    )


def measure_original(
    engine: Engine, asks: list[Ask], bucket_ids: list[str], today: dt.date, duration: float
) -> list[Original]:
    out = []
    for ask in asks:
        original_request(engine, ask, bucket_ids, today)  # warm-up
        runs: list[tuple[float, float, float, int, int]] = []
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
        q, s, p = ([r[i] for r in runs] for i in range(3))
        ms = [a + b + c for a, b, c in zip(q, s, p, strict=True)]
        out.append(Original(ms, q, s, p, median(servers), runs[-1][3], runs[-1][4]))
        log(f"original {ask.title}: p50 {median(ms):.1f} ms over {len(ms)} requests")
    return out


@dataclass
class Breakdown:
    handler_ms: float  # FeedServicer._answer
    sql_ms: float  # store.fetch_feed alone
    server_ms: float  # EXPLAIN ANALYZE execution time
    planning_ms: float
    build_ms: float  # _fill of the page into protobuf
    serialize_ms: float
    parse_ms: float


class _NoDeadline:
    """Stands in for a grpc ServicerContext without a deadline (all `_answer` asks of it)."""

    def time_remaining(self) -> float | None:
        return None


def _ms(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


async def measure_breakdown(url: str, asks: list[Ask], n: int = 30) -> list[Breakdown]:
    """Medians of `n` in-process calls of each part of the real code."""
    settings = FeedSettings()
    custom = {"plan_cache_mode": "force_custom_plan"}  # as the feed runs
    engine = make_async_engine(settings, name="bench-feed", url=url, server_settings=custom)
    cache = AnswerCache(settings.cache_ttl_seconds, CollectorRegistry())
    servicer = FeedServicer(settings, engine, PageTokens(b"bench"), cache)
    out = []
    try:
        for ask in asks:
            make: Any = (
                feed_pb2.JustOpenedResponse if ask.just_opened else feed_pb2.StillOpenResponse
            )
            handler, sql, server, planning = [], [], [], []
            answer: Any = None
            rows: list[store.FeedRow] = []
            boundary = await servicer._take_boundary()  # shared by first pages, as served
            today = market_today(settings.zone, boundary.at)
            for _ in range(n):
                started = time.perf_counter()
                answer = await servicer._answer(ask.query, boundary, None, _NoDeadline(), make())  # type: ignore[arg-type]
                handler.append((time.perf_counter() - started) * 1000)
            for i in range(n):
                async with engine.connect() as conn:
                    started = time.perf_counter()
                    rows = await store.fetch_feed(
                        conn, ask.query, today=today, boundary=boundary, cursor=None
                    )
                    sql.append((time.perf_counter() - started) * 1000)
                    if i < 3:
                        params = feed_sql.params(ask.query, today, boundary, None)
                        explain = "EXPLAIN (ANALYZE, FORMAT JSON) " + feed_sql.build_sql(
                            ask.query, keyset=False
                        )
                        plan = (await conn.execute(text(explain), params)).scalar_one()
                        server.append(float(plan[0]["Execution Time"]))
                        planning.append(float(plan[0]["Planning Time"]))
            raw = answer.SerializeToString()
            page = rows[: ask.query.limit]
            build = _ms(lambda: servicer._fill(make(), page, ask.query), n)  # noqa: B023
            serialize = _ms(answer.SerializeToString, n)
            parse = _ms(lambda: make().ParseFromString(raw), n)  # noqa: B023
            b = Breakdown(
                median(handler),
                median(sql),
                median(server),
                median(planning),
                build,
                serialize,
                parse,
            )
            out.append(b)
            log(f"in-process {ask.title}: handler {b.handler_ms:.2f} ms, SQL {b.sql_ms:.2f} ms")
    finally:
        await engine.dispose()
    return out
