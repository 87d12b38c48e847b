"""The daily maintenance run against the original job; pruning one day at several table sizes."""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace

from sqlalchemy import event, text

from bench import harness
from bench.harness import Child, Point, Section, StatementRecorder, Target, engine_for, median
from services.maintenance import run as maintenance_run
from services.maintenance import store as maintenance_store
from services.maintenance.settings import MaintenanceSettings
from shared.db.buckets import bucket_id_for
from shared.db.partitions import list_partitions, partition_name
from tools.database import PgServer
from tools.seed import SeedPlan, load, make_plan

TARGET_PEAK_MB, TARGET_PEAK_RATIO, TARGET_AGG_PRUNE_SECONDS = 150, 10, 5
DAY_EVENTS = 36_000  # one day's events at 1M events over 28 days
LEFT = (  # what a job left behind: both jobs must agree
    ("venue_metrics rows", "SELECT count(*) FROM venue_metrics"),
    ("  sum new_drop_count", "SELECT sum(new_drop_count) FROM venue_metrics"),
    ("  sum closed_count", "SELECT sum(closed_count) FROM venue_metrics"),
    ("  sum median duration (s)", "SELECT sum(median_drop_duration_seconds) FROM venue_metrics"),
    ("  sum avg duration (s)", "SELECT sum(avg_drop_duration_seconds) FROM venue_metrics"),
    ("market_metrics rows", "SELECT count(*) FROM market_metrics"),
    ("  sum total_drops", "SELECT sum(total_drops) FROM market_metrics"),
    ("venue_rolling_metrics rows", "SELECT count(*) FROM venue_rolling_metrics"),
    ("drop_events left", "SELECT count(*) FROM drop_events"),
    ("discovery_buckets left", "SELECT count(*) FROM discovery_buckets"),
)
PARTS = ("count", "drop", "checks", "commit", "rest")
TARGET_RATIO = 1.5  # a day's prune at the largest size against the smallest


def prune_part(sql: str) -> str:  # checks: partition list, locks, the venue_metrics sum
    heads = (("SELECT count(*) FROM drop_events_p", "count"), ("DROP TABLE", "drop"))
    return next((part for head, part in heads if sql.startswith(head)), "checks")


def seed_plan(events: int, now: dt.datetime) -> SeedPlan:
    return make_plan(MaintenanceSettings(), events, now=now, past_days=14)


def fixed_day_plans(size: int, day_events: int, days: int, now: dt.datetime) -> list[SeedPlan]:
    """The plan to load first (the `days` oldest days empty) and the one to fill them from."""
    base = seed_plan(size, now)
    fixed = set(base.days[:days])
    if max(fixed) >= base.today:
        raise SystemExit(f"{days} fixed-size days do not fit in the past days")
    others = [b for b in base.buckets if b.day not in fixed]
    # events of a bucket = 2 * pairs - open drops (an open drop has no CLOSED)
    pairs = (size - day_events + sum(b.open_drops for b in others)) / (2 * len(others))
    rest = max(max(b.open_drops for b in others), math.ceil(pairs))
    day_pairs = math.ceil(day_events / (2 * len({b.anchor for b in base.buckets})))
    step = max(rest, day_pairs)  # pair numbers (event ids) stay unique across later fills
    rests = [replace(b, n0=i * step, pairs=rest) for i, b in enumerate(base.buckets)]
    first = tuple(replace(b, pairs=0) if b.day in fixed else b for b in rests)
    final = tuple(replace(b, pairs=day_pairs) if b.day in fixed else b for b in rests)
    return [replace(base, buckets=first), replace(base, buckets=final)]


class Pruned:
    """One database per size, its past days aggregated, pruned one day at a time."""

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
        # ms per method, ours part by part; the pruned day's events and MB on disk
        self.ms: dict[str, list[float]] = {p: [] for p in ("ours", "delete", *PARTS, "day", "mb")}
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
            spent |= {"ours": timer.ms, "day": step.rows, "mb": on_disk}
            for name, value in spent.items():
                self.ms[name].append(value)

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


def measure_prunes(
    server: PgServer, sizes: Sequence[int], now: dt.datetime, repeats: int, day_events: int = 0
) -> list[Pruned]:
    """The sizes in turns (sharing the machine's conditions); each method's first day a warm-up."""
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
            for i in range(1 + repeats):
                for db in dbs if day_events else ():
                    db.refill(db.past[offset + i])
                if day_events or i == 0:
                    harness.checkpoint(server)
                for db in dbs if i % 2 == 0 else dbs[::-1]:
                    getattr(db, method)(db.past[offset + i], i > 0)
        return dbs


def prune_targets(rows: list[Pruned]) -> list[Target]:
    if len(rows) < 2:
        return []
    small, big = rows[0], rows[-1]
    days = [int(r.median("day")) for r in (small, big)]
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


def render_prunes(rows: list[Pruned], section: Section) -> list[Point]:
    """Per size: the day, ours and the row DELETE; where our prune's time goes."""
    if not rows:
        return []
    fixed = f"fixed-size day of {rows[0].fixed_day:,} events" if rows[0].fixed_day else ""
    title, first = fixed or "day grows with the table", "events in the table" if fixed else "events"
    main, parts = [], []
    for r in rows:
        ours, delete, day = r.ms["ours"], r.ms["delete"], int(r.median("day"))
        main.append([f"{r.events:,}", f"{r.load_seconds:.1f}", f"{day:,}", f"{median(ours):.1f}"])
        main[-1] += [f"{min(ours):.1f} / {max(ours):.1f}", f"{median(delete):.1f}"]
        main[-1] += [f"{min(delete):.1f} / {max(delete):.1f}"]
        main[-1] += [f"{median(delete) / median(ours):.1f}x"]
        parts.append([f"{r.events:,}", f"{r.median('mb'):.1f}"])
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


def left_behind(url: str) -> list[float]:
    with (engine := engine_for(url, "bench-check")).connect() as conn:
        values = [float(conn.execute(text(sql)).scalar_one() or 0) for _, sql in LEFT]
        values.append(float(len(list_partitions(conn))))
    engine.dispose()
    return values


# The job named by argv[1] (ours, the original's, or a module to import only), run with
# `python -c` so that each child's peak memory is its own.
JOBS = """\
import sys
if sys.argv[1] == "ours":
    from services.maintenance.__main__ import main
    sys.exit(main(["run", "--now", sys.argv[2]]))
elif sys.argv[1] == "original":
    from bench.maintenance_original import original_job
    original_job(sys.argv[2])
else:
    __import__(sys.argv[1])
"""
IMPORTS = ("services.maintenance.__main__", "bench.maintenance_original")  # ours, the original's


def run_child(kind: str, now: dt.datetime, url: str = "") -> Child:
    """One job to its end; its environment has no DROPWATCH_* but the database URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    env |= {"DROPWATCH_DATABASE_URL": url} if url else {}
    return harness.run_to_end(JOBS, kind, now.isoformat(), env=env)


@dataclass
class Run:
    data: str
    events: int
    ours: Child
    original: Child
    imports: list[Child]  # interpreter + imports only: ours, the original's
    left: list[list[float]]  # ours, the original's


def measure_run(server: PgServer, events: int, now: dt.datetime) -> Run:
    """Both jobs in child processes, each on its own copy of one loaded database."""
    with server.migrated("dw_bench_maint") as template:
        engine, plan = engine_for(server.url_for(template), "bench-load"), seed_plan(events, now)
        seeded, data = harness.seed(engine, plan)
        vacuum = harness.vacuum(engine, "VACUUM")  # as autovacuum would have by now
        sql = "SELECT count(*) FROM drop_events WHERE bucket_date < :t"
        data += f", then VACUUM ({vacuum:.1f} s); the past days hold "
        data += f"{harness.count(engine, sql, t=plan.today):,} events"
        engine.dispose()  # a template must have no connections
        imports = [run_child(module, now) for module in IMPORTS]
        children, left, index_seconds = [], [], 0.0
        for kind in ("ours", "original"):
            with server.database(f"dw_bench_{kind}", template=template) as name:
                url = server.url_for(name)
                if kind == "original":  # it reads through the review's indexes; ours does not
                    index_seconds = harness.create_review_indexes(copy := engine_for(url))
                    copy.dispose()
                harness.checkpoint(server)
                children.append(run_child(kind, now, url))
                left.append(left_behind(url))
            harness.log(f"{kind}: {children[-1].wall_seconds:.1f} s, {children[-1].peak_mb:.0f} MB")
    if not (out := children[0].output).get("ran"):
        raise SystemExit(f"the maintenance run did not run: {out}")
    data += f'; "now" = {now.isoformat()} (today {out.get("today")}, cutoff {out.get("cutoff")})'
    data += f"; the review's indexes on the original's copy: {index_seconds:.1f} s (untimed)"
    return Run(data, seeded.events, children[0], children[1], imports, left)


Result = tuple[Run, list[list[Pruned]]]  # the run; prunes: growing, fixed day


def measure(server: PgServer, args: argparse.Namespace) -> Result:
    """The run; then the prunes, one after the other (each drops its databases first)."""
    zone = MaintenanceSettings().zone
    now = dt.datetime.combine(dt.datetime.now(zone).date(), dt.time(7, 5), tzinfo=zone)
    if now > dt.datetime.now(zone):  # `run --now` refuses a time ahead of the database clock
        now -= dt.timedelta(days=1)
    run = measure_run(server, args.events, now)
    days = [0, args.day_events] if args.day_events else [0]  # events of a pruned day; 0: grows
    return run, [measure_prunes(server, args.prune_sizes, now, args.repeats, d) for d in days]


def targets(r: Run) -> list[Target]:
    steps = r.ours.output["steps"]
    agg = sum(float(steps[n]["seconds"]) for n in ("aggregate", "prune_buckets", "prune_events"))
    ours, theirs = r.ours.peak_mb, r.original.peak_mb
    name = f"peak RSS of the whole run < {TARGET_PEAK_MB} MB"
    out = [Target(name, f"{ours:.0f} MB", ours < TARGET_PEAK_MB)]
    name = f"peak RSS >= {TARGET_PEAK_RATIO}x below the original's"
    got = f"{theirs / ours:.1f}x ({theirs:,.0f} MB vs {ours:.0f} MB)"
    out.append(Target(name, got, theirs / ours >= TARGET_PEAK_RATIO))
    name = f"aggregate + prune of {r.events:,} events < {TARGET_AGG_PRUNE_SECONDS} s"
    got = f"{agg:.2f} s (aggregate + prune_buckets + prune_events steps)"
    return [*out, Target(name, got, agg < TARGET_AGG_PRUNE_SECONDS)]


def render(result: Result, section: Section) -> list[Point]:
    (r, prunes), o = result, result[0].original.output
    section.title = "Daily maintenance run (`bench/maintenance.py`)"
    section.bullets["Data"] = r.data
    section.targets(targets(r) + [t for rows in prunes for t in prune_targets(rows)])
    steps, body = r.ours.output["steps"], []
    for name, s in steps.items():
        detail = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("rows", "seconds"))
        body.append([name, f"{s['rows']:,}", f"{s['seconds']:.3f}", detail or "-"])
    body.append(["all steps", "", f"{sum(float(s['seconds']) for s in steps.values()):.3f}", ""])
    section.table(["step (ours)", "rows", "seconds", "detail"], body, "The run, step by step:")
    what = {
        "load": f"query(DropEvent).all(): {o['loaded']:,} ORM objects",
        "aggregate": f"Python loop over them; {o['aggregated']:,} past events counted",
        "write": f"ORM add_all + commit: {o['venue_rows']:,} venue, {o['market_rows']} "
        f"market, {o['rolling_rows']:,} rolling rows",
        "prune": f"row DELETEs: {o['deleted_buckets']} buckets, "
        f"{o['deleted_events']:,} events, commit",
    }
    body = [[name, f"{sec:.3f}", what[name]] for name, sec in o["parts"].items()]
    body.append(["all parts", f"{sum(o['parts'].values()):.3f}", ""])
    section.table(["part (original)", "seconds", "what"], body, "The original job, part by part:")
    ours, theirs, (ours_i, theirs_i) = r.ours, r.original, r.imports
    body = [["wall, whole child process (s)", f"{ours.wall_seconds:.2f}"]]
    body[0] += [f"{theirs.wall_seconds:.2f}", f"{theirs.wall_seconds / ours.wall_seconds:.1f}x"]
    growth = ours.peak_mb - ours_i.peak_mb, theirs.peak_mb - theirs_i.peak_mb
    for label, a, b in (
        ("peak RSS, VmHWM (MB)", ours.peak_mb, theirs.peak_mb),
        ("  of which interpreter + imports (MB)", ours_i.peak_mb, theirs_i.peak_mb),
        ("  the job's own growth (MB)", *growth),
        ("ru_maxrss from wait4 (MB, for reference)", ours.maxrss_mb, theirs.maxrss_mb),
    ):
        ratio = f"{b / a:.1f}x" if len(body) == 1 else ""  # for the peak only
        body.append([label, f"{a:.0f}", f"{b:.0f}", ratio])
    section.table(["", "ours", "original", "original / ours"], body, "Side by side:")
    body = []
    for n, *values in zip([*dict(LEFT), "drop_events partitions left"], *r.left, strict=True):
        body.append([n, *(f"{v:,.{1 if 'duration' in n else 0}f}" for v in values)])
    pairs = zip(r.left[0][:-1], r.left[1][:-1], strict=True)  # the partitions may differ
    agree = all(abs(a - b) <= 1e-6 * max(1.0, abs(a)) for a, b in pairs)
    title = f"What each job left behind (both must agree: **{'yes' if agree else 'NO'}**):"
    section.table(["left behind", "ours", "original"], body, title)
    points = [Point("daily run, whole job", "s", r.events, ours.wall_seconds, theirs.wall_seconds)]
    points.append(Point("daily run, peak RSS", "MB", r.events, ours.peak_mb, theirs.peak_mb))
    return points + [p for rows in prunes for p in render_prunes(rows, section)]


def check(args: argparse.Namespace) -> str:
    rest = min([*args.prune_sizes, 10**9]) - args.day_events  # of the smallest table
    return "" if rest >= 10_000 else "--day-events must leave 10000 events beside the day"


if __name__ == "__main__":
    options = [
        ("--events", 1_000_000, "drop_events to load", 10_000, 1e9),
        ("--prune-sizes", [100_000, 1_000_000, 5_000_000], "empty: no prunes", 10_000, 1e9),
        ("--day-events", DAY_EVENTS, "0: no fixed-size day", 0, 1e9),
        ("--repeats", 5, "days pruned per method and size", 1, 6),
    ]
    sys.exit(harness.main("maintenance", __doc__, options, measure, render, check=check))
