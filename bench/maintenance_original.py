"""The original daily job (the whole table through the ORM, figures in Python, row DELETEs),
and the child processes both jobs run in, so each one's peak memory is its own."""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from shared.db.buckets import bucket_id_for, market_today
from shared.db.engine import make_engine
from shared.db.models import (
    EVENT_CLOSED,
    EVENT_NEW_DROP,
    DropEvent,
    MarketMetrics,
    VenueMetrics,
    VenueRollingMetrics,
)

REPO = Path(__file__).resolve().parents[1]
# Run with `python -c`. The peak is the child's own VmHWM, written to argv[1] at exit (wait4's
# ru_maxrss also counts the parent's RSS at fork, so it is shown for reference only).
_CHILD = """\
import atexit, json, sys
def _peak(path=sys.argv[1]):
    with open("/proc/self/status") as status:
        peak = [int(l.split()[1]) for l in status if l.startswith("VmHWM:")][0]
    with open(path, "w") as out:
        json.dump(peak, out)
atexit.register(_peak)
if sys.argv[2] == "ours":
    from services.maintenance.__main__ import main
    sys.exit(main(["run", "--now", sys.argv[3]]))
elif sys.argv[2] == "original":
    from bench.maintenance_original import original_job
    original_job(sys.argv[3])
elif sys.argv[2] == "ours-imports":
    import services.maintenance.__main__
else:
    import bench.maintenance_original
"""


@dataclass
class Child:
    wall_seconds: float  # spawn to exit, interpreter start and imports included
    peak_mb: float  # VmHWM of the child itself
    maxrss_mb: float  # wait4's ru_maxrss
    output: dict[str, Any]  # its last JSON line


def run_child(kind: str, now: dt.datetime, url: str | None = None) -> Child:
    """One child to the end; its environment has no DROPWATCH_* but the database URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    if url is not None:
        env["DROPWATCH_DATABASE_URL"] = url
    with tempfile.TemporaryDirectory(prefix="dw-bench-child-") as scratch:
        peak, err = Path(scratch) / "peak.json", Path(scratch) / "stderr"
        started = time.perf_counter()
        with err.open("wb") as stderr:
            args = [sys.executable, "-c", _CHILD, str(peak), kind, now.isoformat()]
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=REPO)
        try:
            assert proc.stdout is not None
            out = proc.stdout.read().decode()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"child {kind} exited {proc.returncode}:\n{err.read_text()[-4000:]}")
        peak_kb = int(json.loads(peak.read_text()))
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return Child(wall, peak_kb / 1024, usage.ru_maxrss / 1024, lines[-1] if lines else {})


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


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
    with Session(engine) as session:
        events = session.query(DropEvent).all()  # the whole table
        parts["load"] = time.perf_counter() - started
        started = time.perf_counter()
        # (venue, day) -> new, closed, prime, off_peak, durations
        venues: dict[tuple[int, dt.date], list[Any]] = defaultdict(lambda: [0, 0, 0, 0, []])
        # day -> new, closed, venues with drops, durations, drops by hour
        markets: dict[dt.date, list[Any]] = defaultdict(lambda: [0, 0, set(), [], Counter()])
        aggregated = 0
        for e in events:
            if e.bucket_id >= cutoff:
                continue
            aggregated += 1
            v, m = venues[(e.venue_id, e.bucket_date)], markets[e.bucket_date]
            if e.event_type == EVENT_NEW_DROP:
                v[0] += 1
                v[2 if e.time_bucket == "prime" else 3] += 1
                m[0] += 1
                m[2].add(e.venue_id)
                m[4][e.opened_at.astimezone(settings.zone).hour] += 1
            elif e.event_type == EVENT_CLOSED:
                v[1] += 1
                m[1] += 1
                if e.drop_duration_seconds is not None:
                    v[4].append(e.drop_duration_seconds)
                    m[3].append(e.drop_duration_seconds)
        venue_rows = [
            VenueMetrics(
                venue_id=venue_id,
                window_date=day,
                new_drop_count=v[0],
                closed_count=v[1],
                prime_drop_count=v[2],
                off_peak_drop_count=v[3],
                avg_drop_duration_seconds=_mean(v[4]),
                median_drop_duration_seconds=_median(v[4]),
                scarcity_score=1.0 / (1 + v[0]),
            )
            for (venue_id, day), v in venues.items()
        ]
        market_rows = [
            MarketMetrics(
                market=settings.market,
                window_date=day,
                total_drops=m[0],
                total_closes=m[1],
                venues_with_drops=len(m[2]),
                avg_drop_duration_seconds=_mean(m[3]),
                median_drop_duration_seconds=_median(m[3]),
                weekday=day.isoweekday(),
                drops_by_hour={str(h): n for h, n in sorted(m[4].items())},
            )
            for day, m in markets.items()
        ]
        parts["aggregate"] = time.perf_counter() - started
        started = time.perf_counter()
        session.add_all([*venue_rows, *market_rows])
        session.flush()
        # Rolling figures from the venue rows of the window.
        since = today - dt.timedelta(days=settings.rolling_days)
        window = select(VenueMetrics).where(
            VenueMetrics.window_date >= since, VenueMetrics.window_date < today
        )
        per_venue: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for row in session.scalars(window):
            r = per_venue[row.venue_id]
            r[0] += row.new_drop_count
            r[1] += 1 if row.new_drop_count > 0 else 0
            if row.window_date >= today - dt.timedelta(days=7):
                r[2] += row.new_drop_count
            elif row.window_date >= today - dt.timedelta(days=14):
                r[3] += row.new_drop_count
        days = settings.rolling_days
        session.add_all(
            VenueRollingMetrics(
                venue_id=venue_id,
                as_of_date=today,
                total_drops=r[0],
                days_with_drops=r[1],
                drops_per_day=r[0] / days,
                rarity_score=1.0 / (1 + r[0] / days),
                last7_drops=r[2],
                prev7_drops=r[3],
                trend=r[2] / r[3] if r[3] > 0 else None,
                availability_rate=r[1] / days,
            )
            for venue_id, r in per_venue.items()
        )
        session.commit()
        parts["write"] = time.perf_counter() - started
        started = time.perf_counter()
        cut = {"cutoff": cutoff}
        buckets = session.execute(
            text("DELETE FROM discovery_buckets WHERE bucket_id < :cutoff"), cut
        )
        deleted = session.execute(text("DELETE FROM drop_events WHERE bucket_id < :cutoff"), cut)
        session.commit()
        parts["prune"] = time.perf_counter() - started
    engine.dispose()
    counts = (len(events), aggregated, len(venue_rows), len(market_rows), len(per_venue))
    keys = ("loaded", "aggregated", "venue_rows", "market_rows", "rolling_rows")
    result: dict[str, Any] = dict(zip(keys, counts, strict=True), parts=parts)
    result["deleted_buckets"] = int(getattr(buckets, "rowcount", 0))
    result["deleted_events"] = int(getattr(deleted, "rowcount", 0))
    print(json.dumps(result), flush=True)
