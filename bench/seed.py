"""`dropwatch seed` against INSERTs into the indexed table and the floor (docs/performance.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine, text

from bench import harness
from bench.harness import Point, Section, Target, engine_for
from shared.db.partitions import ensure_partitions, partition_name
from shared.settings import Settings
from tools.database import PgServer
from tools.seed import SeedPlan, Shape, load, make_plan, open_state, parent
from tools.seed import day as day_rows
from tools.seed.loader import ANALYZED, LOADERS, add_venues_and_buckets

TARGET_OF_FLOOR = 0.75  # ours must load at least this share of the floor's events/s
TITLES = {
    "ours": "dropwatch seed",
    "history": "history only (--open-ratio 0)",
    "review_indexes": "dropwatch seed + the review's 6 indexes",
    "naive": "INSERT into the indexed table",
    "floor": "floor: the same rows copied",
}


def the_original(engine: Engine, plan: SeedPlan) -> None:
    """The same rows inserted straight into the partitioned table, every index maintained."""
    with engine.begin() as conn:
        add_venues_and_buckets(conn, plan, plan.days)
        ensure_partitions(conn, plan.days)

    def one_day(day: dt.date) -> None:
        with engine.begin() as conn:
            day_rows.insert(conn, plan, day, 0)

    with ThreadPoolExecutor(max_workers=LOADERS) as pool:  # as the seed loads its days
        list(pool.map(one_day, plan.days))
    analyze = [f"ANALYZE {partition_name(day)} ({ANALYZED})" for day in plan.days]
    for sql in [*analyze, "ANALYZE open_slots, baseline_slots, discovery_buckets, venues"]:
        harness.vacuum(engine, sql)  # the statistics ours gathers


def the_floor(engine: Engine, plan: SeedPlan) -> None:
    """The rows `load` wrote, written once more the same way with nothing to generate."""
    with engine.connect() as conn:
        indexes, rebuilt = parent.indexes(conn), open_state.definitions(conn)
    state = [item.create.replace("open_slots", "floor_open") for item in rebuilt]
    copies = [("open_slots", "floor_open", "open_slots INCLUDING DEFAULTS", state, "")]
    for source in map(partition_name, plan.days):
        target, like = f"floor_{source}", "drop_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
        ddl = [index.ddl(target) for index in indexes]
        copies.append((source, target, like, ddl, f" ({ANALYZED})"))

    def copy(job: tuple[str, str, str, list[str], str]) -> None:
        source, target, like, ddl, columns = job
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
            conn.execute(text(f"CREATE TABLE {target} (LIKE {like})"))
            conn.execute(text(f"INSERT INTO {target} SELECT * FROM {source}"))
            for sql in [*ddl, "SET LOCAL default_statistics_target = 20"]:
                conn.execute(text(sql))
            conn.execute(text(f"ANALYZE {target}{columns}"))

    with ThreadPoolExecutor(max_workers=LOADERS) as pool:
        list(pool.map(copy, copies))


@dataclass
class Run:
    events: int
    history_events: int  # the history-only plan's (no open drops: a few more)
    open_rows: int  # open_slots rows ours writes (open drops + baseline)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # busy CPU s of the whole machine

    def record(self, variant: str, timer: harness.Timer) -> None:
        self.seconds[variant], self.cpu[variant] = timer.seconds, timer.cpu
        harness.log(f"{self.events:,}: {TITLES[variant]}: {timer.seconds:.1f} s")

    def rate(self, variant: str) -> float:
        events = self.history_events if variant == "history" else self.events
        return events / self.seconds[variant]


def measure(server: PgServer, args: argparse.Namespace) -> list[Run]:
    """Per size, each variant on its own fresh database; the floor in ours's, after its load."""
    runs, now = [], dt.datetime.now(dt.UTC)
    for size in args.sizes:
        plan = make_plan(Settings(), size, now=now)
        history = make_plan(Settings(), size, now=now, shape=Shape(open_ratio=0, recent=0))
        run = Run(plan.events, history.events, sum(b.open_drops + b.baseline for b in plan.buckets))
        counts = {}
        for variant in ("ours", "history", "review_indexes", "naive"):
            with server.migrated("dw_bench_seed") as name:
                engine = engine_for(server.url_for(name), db_pool_size=4)
                if variant == "review_indexes":
                    harness.create_review_indexes(engine)
                with harness.Timer() as timer:
                    if variant == "naive":
                        the_original(engine, plan)
                    else:
                        load(engine, history if variant == "history" else plan)
                run.record(variant, timer)
                counts[variant] = harness.count(engine, "SELECT count(*) FROM drop_events")
                if variant == "ours":
                    with harness.Timer() as timer:
                        the_floor(engine, plan)
                    run.record("floor", timer)
                engine.dispose()
        if counts.pop("history") != history.events or len(set(counts.values())) != 1:
            raise SystemExit(f"the variants loaded different event counts: {counts}")
        runs.append(run)
    return runs


def targets(runs: list[Run]) -> list[Target]:
    big = runs[-1]
    floor, out = big.rate("floor"), []
    for variant, what in (
        ("ours", f"the default data ({big.open_rows:,} open_slots rows)"),
        ("history", "history only, no open state"),
    ):
        rate = big.rate(variant)
        name = f"at least {TARGET_OF_FLOOR:.0%} of the floor's events/s: {what}"
        got = f"{rate:,.0f} events/s = {rate / floor:.0%} of {floor:,.0f} at {big.events:,}"
        out.append(Target(name, got, rate >= TARGET_OF_FLOOR * floor))
    return out


def render(runs: list[Run], section: Section) -> list[Point]:
    section.title = "Seeding (`bench/seed.py`)"
    section.bullets["Loaders"] = f"{LOADERS} days at a time"
    head = ["events", "open_slots rows", "load", "s", "events/s", "CPU s", "vs naive"]
    body = []
    for r in runs:
        for i, (v, title) in enumerate(TITLES.items()):
            first = [f"{r.events:,}", f"{r.open_rows:,}"] if i == 0 else ["", ""]
            rate, cpu, vs = r.rate(v), r.cpu[v], r.seconds["naive"] / r.seconds[v]
            body.append([*first, title, f"{r.seconds[v]:.1f}", f"{rate:,.0f}", f"{cpu:.1f}"])
            body[-1].append(f"{vs:.1f}x")
    big = runs[-1]
    floor, ours = big.rate("floor"), big.rate("ours")
    section.table(head, body).targets(targets(runs)).add(
        f"Ceiling at {big.events:,} events: writing the same rows with nothing to generate "
        f"runs at {floor:,.0f} events/s here ({big.seconds['floor']:.1f} s); ours reaches "
        f"{ours / floor:.0%} of it (target {TARGET_OF_FLOOR:.0%})."
    )
    what = "load the whole history"
    return [Point(what, "s", r.events, r.seconds["ours"], r.seconds["naive"]) for r in runs]


if __name__ == "__main__":
    options = [("--sizes", [100_000, 1_000_000], "events to load", 1000, 1e9)]
    show = ("wal_level", "shared_buffers", "synchronous_commit")
    sys.exit(harness.main("seed", __doc__, options, measure, render, show))
