"""Pruning one past day at several table sizes: ours (drop the day's partition) against the
original row DELETE, with the day growing with the table or of a fixed size."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace

from sqlalchemy import event, text

from bench import harness
from bench.harness import Point, Section, StatementRecorder, Target, engine_for, median
from services.maintenance import run as maintenance_run
from services.maintenance import store as maintenance_store
from services.maintenance.settings import MaintenanceSettings
from shared.db.buckets import bucket_id_for
from shared.db.partitions import partition_name
from tools.database import PgServer
from tools.seed import SeedPlan, load, make_plan

PARTS = ("count", "drop", "checks", "commit", "rest")
TARGET_RATIO = 1.5  # a day's prune at the largest size against the smallest


def prune_part(sql: str) -> str:
    if sql.startswith("SELECT count(*) FROM drop_events_p"):
        return "count"
    # checks: partition list, LOCK, advisory lock, the venue_metrics sum
    return "drop" if sql.startswith("DROP TABLE") else "checks"


def seed_plan(events: int, now: dt.datetime) -> SeedPlan:
    return make_plan(MaintenanceSettings(), events, now=now, past_days=14)


def fixed_day_plans(size: int, day_events: int, days: int, now: dt.datetime) -> list[SeedPlan]:
    """About `size` events, the `days` oldest past days `day_events` each: the plan to load
    first (those days empty), the plan to fill them from one at a time."""
    base = seed_plan(size, now)
    fixed = set(base.days[:days])
    if any(day >= base.today for day in fixed):
        raise SystemExit(f"{days} fixed-size days do not fit in the past days")
    others = [b for b in base.buckets if b.day not in fixed]
    # events of a bucket = 2 * pairs - open drops (an open drop has no CLOSED)
    pairs = (size - day_events + sum(b.open_drops for b in others)) / (2 * len(others))
    rest = max(max(b.open_drops for b in others), math.ceil(pairs))
    day_pairs = math.ceil(day_events / (2 * len({b.anchor for b in base.buckets})))
    final, n0 = [], 0  # pair numbers (event ids) stay unique across later fills
    for b in base.buckets:
        final.append(replace(b, n0=n0, pairs=day_pairs if b.day in fixed else rest))
        n0 += final[-1].pairs
    first = tuple(replace(b, pairs=0) if b.day in fixed else b for b in final)
    return [replace(base, buckets=first), replace(base, buckets=tuple(final))]


class Pruned:
    """One database per size: loaded, its past days aggregated, pruned one day at a time; it
    keeps the figures of its prunes (ms per method, ours part by part)."""

    def __init__(self, url: str, size: int, now: dt.datetime, day_events: int, days: int) -> None:
        self.settings, self.engine = MaintenanceSettings(), engine_for(url, "bench-prune")
        plans = [seed_plan(size, now)]
        plans = fixed_day_plans(size, day_events, days, now) if day_events else plans
        self.refill_plan, self.fixed = plans[-1], set(plans[0].days[:days] if day_events else ())
        seeded = load(self.engine, plans[0])
        harness.vacuum(self.engine, "VACUUM")  # as autovacuum would have by now
        harness.log(f"prune {size:,}: loaded {seeded.events:,} in {seeded.seconds:.1f} s")
        self.size, self.fixed_day, self.index_seconds = size, day_events, 0.0
        self.id_base, self.load_seconds = seeded.id_base, seeded.seconds
        self.resident = self.events = seeded.events  # events: in the table at each prune
        self.past = [d for d in plans[0].days if d < plans[0].today]
        for day in sorted(set(self.past) - self.fixed):
            self.aggregate(day)
        self.ms: dict[str, list[float]] = {"ours": [], "delete": []}  # then ours, part by part
        self.ms |= {p: [] for p in PARTS}
        self.day_events: list[float] = []
        self.day_mb: list[float] = []  # the pruned partition on disk
        self.recorder, self.commits = StatementRecorder(self.engine), [0.0]
        event.listen(self.engine, "commit", lambda conn: self.commits.append(time.perf_counter()))

    def median(self, what: str) -> float:
        return median(self.ms[what])

    def aggregate(self, day: dt.date) -> int:
        with self.engine.begin() as conn:
            market, zone = self.settings.market, self.settings.market_timezone
            return maintenance_store.aggregate_day(conn, day, market=market, zone=zone)

    def refill(self, day: dt.date) -> None:
        """Fill the empty fixed-size `day` (untimed): its load, VACUUM (ANALYZE), aggregation."""
        inserted = load(self.engine, self.refill_plan, days=[day], id_base=self.id_base).events
        harness.vacuum(self.engine, f"VACUUM (ANALYZE) {partition_name(day)}")
        if self.aggregate(day) != inserted:
            raise SystemExit(f"fill of {day}: the aggregation counted other than {inserted}")
        self.events = self.resident + inserted  # the earlier filled days are gone

    def ours(self, day: dt.date, keep: bool) -> None:
        """The real prune_events step for `day` alone, timed part by part."""
        size = f"SELECT pg_total_relation_size('{partition_name(day)}')"
        on_disk = harness.count(self.engine, size) / 2**20
        with self.recorder.window() as window, harness.Timer() as timer:
            step = maintenance_run._prune_events(self.settings, self.engine, [day])
        if step.detail != {"partitions": 1, "reaggregated": 0}:
            raise SystemExit(f"prune of {day} did not go as planned: {step}")
        if keep:
            spent, _ = harness.split(window, prune_part)
            spent["commit"] = (timer.stopped - self.commits[-1]) * 1000
            spent["rest"] = timer.ms - sum(spent.values())
            for name, ms in [*spent.items(), ("ours", timer.ms)]:
                self.ms[name].append(ms)
            self.day_events.append(step.rows)
            self.day_mb.append(on_disk)

    def delete(self, day: dt.date, keep: bool) -> None:
        """The original row DELETE; the earlier days are gone, so it removes `day` alone."""
        cutoff = bucket_id_for(day + dt.timedelta(days=1), "00:00")
        with harness.Timer() as timer, self.engine.begin() as conn:
            sql = text("DELETE FROM drop_events WHERE bucket_id < :cutoff")
            deleted = conn.execute(sql, {"cutoff": cutoff}).rowcount
        if self.fixed and deleted != self.events - self.resident:
            raise SystemExit(f"row DELETE of the filled {day} removed {deleted} events")
        if keep:
            self.ms["delete"].append(timer.ms)


def measure(
    server: PgServer, sizes: Sequence[int], now: dt.datetime, repeats: int, day_events: int = 0
) -> list[Pruned]:
    """The sizes pruned in turns, so they share the machine's conditions; ours, then the row
    DELETE after the review's indexes; each method's first day a warm-up."""
    with ExitStack() as stack:
        dbs = []
        for size in sizes:
            name = stack.enter_context(server.migrated("dw_bench_prune"))
            dbs.append(Pruned(server.url_for(name), size, now, day_events, 2 * (1 + repeats)))
            stack.callback(dbs[-1].engine.dispose)
        for method in ("ours", "delete"):
            offset = 0 if method == "ours" else 1 + repeats
            for db in dbs if method == "delete" else ():
                db.index_seconds = harness.create_review_indexes(db.engine)
            if not day_events:
                harness.checkpoint(server)
            for i in range(1 + repeats):
                for db in dbs if day_events else ():
                    db.refill(db.past[offset + i])
                if day_events:
                    harness.checkpoint(server)
                for db in dbs if i % 2 == 0 else dbs[::-1]:
                    getattr(db, method)(db.past[offset + i], i > 0)
        return dbs


def targets(rows: list[Pruned]) -> list[Target]:
    if len(rows) < 2:
        return []
    small, big = rows[0], rows[-1]
    days = [int(median(r.day_events)) for r in (small, big)]
    if big.fixed_day:
        name = f"fixed-size day ({days[1]:,} events): prune of that day with {big.events:,}"
        name += " events in the table"
    else:
        name = f"day grows with the table ({days[0]:,} -> {days[1]:,} events in the day): "
        name += f"prune of one day at {big.events:,} events"
    ours = big.median("ours") / small.median("ours")
    fastest = min(big.ms["ours"]) / min(small.ms["ours"])
    got = f"{ours:.2f}x ({big.median('ours'):.1f} ms vs {small.median('ours'):.1f} ms; fastest "
    got += f"{fastest:.2f}x); row DELETE: {big.median('delete') / small.median('delete'):.1f}x "
    got += f"({big.median('delete'):.1f} ms vs {small.median('delete'):.1f} ms)"
    name += f" <= {TARGET_RATIO}x its time at {small.events:,}"
    return [Target(name, got, ours <= TARGET_RATIO)]


def render(rows: list[Pruned], section: Section) -> list[Point]:
    """Per size: the day, ours and the row DELETE; where our prune's time goes."""
    if not rows:
        return []
    fixed = f"fixed-size day of {rows[0].fixed_day:,} events" if rows[0].fixed_day else ""
    title, first = fixed or "day grows with the table", "events in the table" if fixed else "events"
    main, parts = [], []
    for r in rows:
        ours, delete, day = r.ms["ours"], r.ms["delete"], int(median(r.day_events))
        main.append([f"{r.events:,}", f"{r.load_seconds:.1f}", f"{day:,}", f"{median(ours):.1f}"])
        main[-1] += [f"{min(ours):.1f} / {max(ours):.1f}", f"{median(delete):.1f}"]
        main[-1] += [f"{min(delete):.1f} / {max(delete):.1f}"]
        main[-1] += [f"{median(delete) / median(ours):.1f}x"]
        parts.append([f"{r.events:,}", f"{median(r.day_mb):.1f}"])
        parts[-1] += [f"{r.median(p):.1f}" for p in (*PARTS, "ours")]
    head = [first, "load s", "events in the day", "ours ms (median)", "ours min / max ms"]
    head += ["row DELETE ms (median)", "DELETE min / max ms", "DELETE / ours"]
    section.table(head, main, f"Pruning one past day, by table size: **{title}**:")
    head = [first, "day's partition MB", "count(*) ms", "DROP TABLE ms", "other statements ms"]
    head += ["COMMIT ms", "rest ms", "ours ms (median)"]
    section.table(head, parts, f"Where our prune time goes ({title}):")
    indexes = max(r.index_seconds for r in rows)
    section.add(f"The review's indexes for the row DELETE: up to {indexes:.1f} s (untimed).")
    what = f"prune one {rows[0].fixed_day:,}-event day" if fixed else ""
    what = what or "prune one past day (grows with the table)"
    return [Point(what, "ms", r.size, r.median("ours"), r.median("delete")) for r in rows]
