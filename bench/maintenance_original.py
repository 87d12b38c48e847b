"""The original daily job: the whole table through the ORM, figures in Python, row DELETEs
(docs/architecture.md). It runs in a child process, so it imports nothing of the benchmark's."""

from __future__ import annotations

import datetime as dt
import json
import statistics
import time
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from shared.db.buckets import bucket_id_for, market_today
from shared.db.engine import make_engine
from shared.db.models import EVENT_CLOSED, EVENT_NEW_DROP, DropEvent, MarketMetrics, VenueMetrics
from shared.db.models import VenueRollingMetrics as Rolling

VENUE_COUNTS = ("new_drop_count", "closed_count", "prime_drop_count", "off_peak_drop_count")
MARKET_COUNTS = ("total_drops", "total_closes")


def durations(values: list[float]) -> dict[str, float | None]:
    return {
        "avg_drop_duration_seconds": sum(values) / len(values) if values else None,
        "median_drop_duration_seconds": float(statistics.median(values)) if values else None,
    }


def original_job(now_iso: str) -> None:
    """The original aggregate_before_prune + prune jobs; prints one JSON line of its parts."""
    from services.maintenance.settings import MaintenanceSettings

    settings = MaintenanceSettings()
    assert settings.database_url is not None
    now = dt.datetime.fromisoformat(now_iso)
    today = market_today(settings.zone, now)
    cutoff = bucket_id_for(today, settings.cutoff_time)
    engine = make_engine(settings, name="original", url=settings.database_url.get_secret_value())
    parts: dict[str, float] = {}
    started = time.perf_counter()

    def done(part: str) -> None:
        nonlocal started
        parts[part], started = time.perf_counter() - started, time.perf_counter()

    with Session(engine) as session:
        events = session.query(DropEvent).all()  # the whole table
        done("load")
        # the columns of each (venue, day)'s and each day's row, counted first
        venues: dict[Any, dict[str, Any]] = defaultdict(lambda: dict.fromkeys(VENUE_COUNTS, 0))
        markets: dict[Any, dict[str, Any]] = defaultdict(lambda: dict.fromkeys(MARKET_COUNTS, 0))
        drop_venues: dict[Any, set[int]] = defaultdict(set)  # per day
        hours: dict[Any, Counter[int]] = defaultdict(Counter)
        seconds: dict[Any, list[float]] = defaultdict(list)  # per (venue, day) and per day
        aggregated = 0
        for e in events:
            if e.bucket_id >= cutoff:
                continue
            aggregated += 1
            day, v, m = e.bucket_date, venues[(e.venue_id, e.bucket_date)], markets[e.bucket_date]
            if e.event_type == EVENT_NEW_DROP:
                v["new_drop_count"] += 1
                v["prime_drop_count" if e.time_bucket == "prime" else "off_peak_drop_count"] += 1
                m["total_drops"] += 1
                drop_venues[day].add(e.venue_id)
                hours[day][e.opened_at.astimezone(settings.zone).hour] += 1
            elif e.event_type == EVENT_CLOSED:
                v["closed_count"] += 1
                m["total_closes"] += 1
                if e.drop_duration_seconds is not None:
                    seconds[(e.venue_id, day)].append(e.drop_duration_seconds)
                    seconds[day].append(e.drop_duration_seconds)
        venue_rows, market_rows = [], []
        for (venue, day), row in venues.items():
            row |= durations(seconds[(venue, day)]) | {"venue_id": venue, "window_date": day}
            venue_rows.append(VenueMetrics(**row, scarcity_score=1.0 / (1 + row["new_drop_count"])))
        for day, row in markets.items():
            row |= durations(seconds[day]) | {"market": settings.market, "window_date": day}
            by_hour = {str(h): n for h, n in sorted(hours[day].items())}
            row |= {"venues_with_drops": len(drop_venues[day]), "drops_by_hour": by_hour}
            market_rows.append(MarketMetrics(**row, weekday=day.isoweekday()))
        done("aggregate")
        session.add_all([*venue_rows, *market_rows])
        session.flush()
        # Rolling figures from the venue rows of the window.
        since = today - dt.timedelta(days=settings.rolling_days)
        date = VenueMetrics.window_date
        window = select(VenueMetrics).where(date >= since, date < today)
        rolling = ("total_drops", "days_with_drops", "last7_drops", "prev7_drops")
        per_venue: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(rolling, 0))
        for metrics in session.scalars(window):
            r, age = per_venue[metrics.venue_id], (today - metrics.window_date).days
            r["total_drops"] += metrics.new_drop_count
            r["days_with_drops"] += 1 if metrics.new_drop_count > 0 else 0
            if age <= 14:
                r["last7_drops" if age <= 7 else "prev7_drops"] += metrics.new_drop_count
        days = settings.rolling_days
        for venue_id, r in per_venue.items():
            total, last7, prev7 = r["total_drops"], r["last7_drops"], r["prev7_drops"]
            more: dict[str, Any] = dict(drops_per_day=total / days)
            more.update(rarity_score=1.0 / (1 + total / days))
            more.update(trend=last7 / prev7 if prev7 > 0 else None)
            more.update(availability_rate=r["days_with_drops"] / days)
            session.add(Rolling(venue_id=venue_id, as_of_date=today, **r, **more))
        session.commit()
        done("write")
        cut, sql = {"cutoff": cutoff}, "DELETE FROM {} WHERE bucket_id < :cutoff"
        tables = ("discovery_buckets", "drop_events")
        buckets, deleted = (session.execute(text(sql.format(t)), cut) for t in tables)
        session.commit()
        done("prune")
    engine.dispose()
    result = dict(loaded=len(events), aggregated=aggregated, venue_rows=len(venue_rows))
    result.update(market_rows=len(market_rows), rolling_rows=len(per_venue))
    result.update(deleted_buckets=getattr(buckets, "rowcount", 0))
    result.update(deleted_events=getattr(deleted, "rowcount", 0))
    print(json.dumps({**result, "parts": parts}), flush=True)
