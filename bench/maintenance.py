"""The daily maintenance run against the original job, and pruning one day at several table
sizes against the original row DELETE (docs/performance.md, Daily maintenance run).

    .venv/bin/python -m bench.maintenance [--events 1000000]
                                          [--prune-sizes 100000,1000000,5000000]
                                          [--day-events 36000] [--repeats 5] [--skip-run]
                                          [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass, field

from sqlalchemy import text

from bench import harness, maintenance_prune
from bench.harness import Point, Section, Target, engine_for, median
from bench.maintenance_original import Child, run_child
from services.maintenance.settings import MaintenanceSettings
from shared.db.partitions import list_partitions
from tools.database import PgServer, pg_server

TARGET_PEAK_MB, TARGET_PEAK_RATIO, TARGET_AGG_PRUNE_SECONDS, TARGET_PRUNE_RATIO = 150, 10, 5, 1.5
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


def left_behind(url: str) -> list[float]:
    engine = engine_for(url, "bench-check")
    try:
        with engine.connect() as conn:
            values = [float(conn.execute(text(sql)).scalar_one() or 0) for _, sql in LEFT]
            return [*values, float(len(list_partitions(conn)))]
    finally:
        engine.dispose()


@dataclass
class Run:
    data: str
    events: int
    ours: Child
    original: Child
    imports: tuple[Child, Child]  # interpreter + imports only: ours, the original's
    left: tuple[list[float], list[float]]  # ours, the original's
    index_seconds: float  # the review's indexes on the original's copy (untimed)

    def agree(self) -> bool:
        ours, theirs = self.left
        return all(
            abs(a - b) <= 1e-6 * max(1.0, abs(a))
            for a, b in zip(ours[:-1], theirs[:-1], strict=True)
        )


def measure_run(server: PgServer, events: int, now: dt.datetime) -> Run:
    """Both jobs in child processes, each on its own copy of one loaded database."""
    with server.migrated("dw_bench_maint") as template:
        engine = engine_for(server.url_for(template), "bench-load")
        plan = maintenance_prune.seed_plan(events, now)
        seeded, data = harness.seed(engine, plan)
        vacuum = harness.vacuum(engine, "VACUUM")  # as autovacuum would have by now
        sql = "SELECT count(*) FROM drop_events WHERE bucket_date < :t"
        data += f", then VACUUM ({vacuum:.1f} s); the past days hold "
        data += f"{harness.count(engine, sql, t=plan.today):,} events"
        engine.dispose()  # a template must have no connections
        imports = (run_child("ours-imports", now), run_child("original-imports", now))
        children, left, index_seconds = [], [], 0.0
        for kind in ("ours", "original"):
            with server.database(f"dw_bench_{kind}", template=template) as name:
                url = server.url_for(name)
                if kind == "original":  # it reads through the review's indexes; ours does not
                    copy = engine_for(url)
                    index_seconds = harness.create_review_indexes(copy)
                    copy.dispose()
                harness.checkpoint(server)
                children.append(run_child(kind, now, url))
                left.append(left_behind(url))
            harness.log(
                f"{kind}: {children[-1].wall_seconds:.1f} s, peak {children[-1].peak_mb:.0f} MB"
            )
    if not children[0].output.get("ran"):
        raise SystemExit(f"the maintenance run did not run: {children[0].output}")
    out = children[0].output
    data += f'; "now" = {now.isoformat()} (today {out.get("today")}, cutoff {out.get("cutoff")})'
    data += f"; the review's indexes on the original's copy: {index_seconds:.1f} s (untimed)"
    return Run(
        data, seeded.events, children[0], children[1], imports, (left[0], left[1]), index_seconds
    )


@dataclass
class Report:
    command: str
    postgres: str
    run: Run | None
    prune: list[maintenance_prune.Row] = field(default_factory=list)
    fixed: list[maintenance_prune.Row] = field(default_factory=list)


def measure(args: argparse.Namespace, command: str) -> Report:
    zone = MaintenanceSettings().zone
    now = dt.datetime.combine(dt.datetime.now(zone).date(), dt.time(7, 5), tzinfo=zone)
    if now > dt.datetime.now(zone):  # `run --now` refuses a time ahead of the database clock
        now -= dt.timedelta(days=1)
    with pg_server("dropwatch-bench-") as server:
        names = ("shared_buffers", "work_mem", "synchronous_commit", "fsync", "jit")
        report = Report(command, harness.postgres(server, names), None)
        if not args.skip_run:
            report.run = measure_run(server, args.events, now)
        if args.sizes:  # one after the other: each drops its databases before the next loads
            report.prune = maintenance_prune.measure(server, args.sizes, now, args.repeats)
            if args.day_events:
                report.fixed = maintenance_prune.measure(
                    server, args.sizes, now, args.repeats, args.day_events
                )
    return report


def targets(report: Report) -> list[Target]:
    out = []
    if (r := report.run) is not None:
        steps = r.ours.output["steps"]
        agg = sum(
            float(steps[n]["seconds"]) for n in ("aggregate", "prune_buckets", "prune_events")
        )
        ours, theirs = r.ours.peak_mb, r.original.peak_mb
        name = f"peak RSS of the whole run < {TARGET_PEAK_MB} MB"
        out.append(Target(name, f"{ours:.0f} MB", ours < TARGET_PEAK_MB))
        name = f"peak RSS >= {TARGET_PEAK_RATIO}x below the original's"
        got = f"{theirs / ours:.1f}x ({theirs:,.0f} MB vs {ours:.0f} MB)"
        out.append(Target(name, got, theirs / ours >= TARGET_PEAK_RATIO))
        name = f"aggregate + prune of {r.events:,} events < {TARGET_AGG_PRUNE_SECONDS} s"
        got = f"{agg:.2f} s (aggregate + prune_buckets + prune_events steps)"
        out.append(Target(name, got, agg < TARGET_AGG_PRUNE_SECONDS))
    for rows in (report.prune, report.fixed):
        if len(rows) < 2:
            continue
        small, big = min(rows, key=lambda r: r.size), max(rows, key=lambda r: r.size)
        days = [int(median([float(n) for n in r.day_events])) for r in (small, big)]
        if big.fixed_day:
            name = f"fixed-size day ({days[1]:,} events): prune of that day with {big.events:,}"
            name += " events in the table"
        else:
            name = f"day grows with the table ({days[0]:,} -> {days[1]:,} events in the day): "
            name += f"prune of one day at {big.events:,} events"
        ratio, fastest = big.ours() / small.ours(), min(big.ours_ms) / min(small.ours_ms)
        got = f"{ratio:.2f}x ({big.ours():.1f} ms vs {small.ours():.1f} ms; fastest "
        got += f"{fastest:.2f}x); row DELETE: {big.delete() / small.delete():.1f}x "
        got += f"({big.delete():.1f} ms vs {small.delete():.1f} ms)"
        name += f" <= {TARGET_PRUNE_RATIO}x its time at {small.events:,}"
        out.append(Target(name, got, ratio <= TARGET_PRUNE_RATIO))
    return out


def render(report: Report) -> str:
    bullets = {"Machine": harness.machine(), "Database": report.postgres}
    if report.run is not None:
        bullets["Data"] = report.run.data
    section = Section("Daily maintenance run (`bench/maintenance.py`)", report.command, **bullets)
    section.targets(targets(report))
    if (r := report.run) is not None:
        steps = r.ours.output["steps"]
        body = []
        for name, s in steps.items():
            detail = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("rows", "seconds"))
            body.append([name, f"{s['rows']:,}", f"{s['seconds']:.3f}", detail or "-"])
        total = sum(float(s["seconds"]) for s in steps.values())
        head = ["step (ours)", "rows", "seconds", "detail"]
        section.table(
            head, [*body, ["all steps", "", f"{total:.3f}", ""]], "The run, step by step:"
        )
        o = r.original.output
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
        head = ["part (original)", "seconds", "what"]
        section.table(head, body, "The original job, part by part:")
        (ours, theirs), (ours_i, theirs_i) = (r.ours, r.original), r.imports
        body = [["wall, whole child process (s)", f"{ours.wall_seconds:.2f}"]]
        body[0] += [f"{theirs.wall_seconds:.2f}", f"{theirs.wall_seconds / ours.wall_seconds:.1f}x"]
        mb = [  # ours and the original's, MB
            ("peak RSS, VmHWM (MB)", ours.peak_mb, theirs.peak_mb),
            ("  of which interpreter + imports (MB)", ours_i.peak_mb, theirs_i.peak_mb),
            ("  the job's own growth (MB)", ours.peak_mb - ours_i.peak_mb, 0.0),
            ("ru_maxrss from wait4 (MB, for reference)", ours.maxrss_mb, theirs.maxrss_mb),
        ]
        body += [[label, f"{a:.0f}", f"{b:.0f}", ""] for label, a, b in mb]
        body[1][3] = f"{theirs.peak_mb / ours.peak_mb:.1f}x"
        body[3][2] = f"{theirs.peak_mb - theirs_i.peak_mb:.0f}"
        section.table(["", "ours", "original", "original / ours"], body, "Side by side:")
        names = [name for name, _ in LEFT] + ["drop_events partitions left"]
        digits = [1 if "duration" in n else 0 for n in names]
        body = [
            [n, f"{a:,.{d}f}", f"{b:,.{d}f}"]
            for n, d, a, b in zip(names, digits, *r.left, strict=True)
        ]
        agree = "yes" if r.agree() else "NO"
        title = f"What each job left behind (both must agree: **{agree}**):"
        section.table(["left behind", "ours", "original"], body, title)
    fixed = f"fixed-size day of {report.fixed[0].fixed_day:,} events" if report.fixed else ""
    for rows, title in ((report.prune, "day grows with the table"), (report.fixed, fixed)):
        if rows:
            main, parts = maintenance_prune.tables(rows)
            section.table(main[0], main[1:], f"Pruning one past day, by table size: **{title}**:")
            section.table(parts[0], parts[1:], f"Where our prune time goes ({title}):")
            indexes = max(r.index_seconds for r in rows)
            section.add(
                f"The review's indexes for the row DELETE: up to {indexes:.1f} s (untimed)."
            )
    return str(section)


def points(report: Report) -> list[Point]:
    out = []
    if (r := report.run) is not None:
        ours, theirs = r.ours, r.original
        out.append(
            Point("daily run, whole job", "s", r.events, ours.wall_seconds, theirs.wall_seconds)
        )
        out.append(Point("daily run, peak RSS", "MB", r.events, ours.peak_mb, theirs.peak_mb))
    for row in report.prune:
        what = "prune one past day (grows with the table)"
        out.append(Point(what, "ms", row.size, row.ours(), row.delete()))
    for row in report.fixed:
        what = f"prune one {row.fixed_day:,}-event day"
        out.append(Point(what, "ms", row.size, row.ours(), row.delete()))
    return out


def main() -> int:
    p = harness.parser("maintenance", __doc__)
    p.add_argument("--events", type=int, default=1_000_000, help="drop_events to load")
    p.add_argument("--prune-sizes", default="100000,1000000,5000000", help="empty: no prunes")
    p.add_argument("--day-events", type=int, default=DAY_EVENTS, help="0: no fixed-size day")
    p.add_argument("--repeats", type=int, default=5, help="days pruned per method and size")
    p.add_argument("--skip-run", "--only-prune", dest="skip_run", action="store_true")
    args = p.parse_args()
    args.sizes = [int(s) for s in args.prune_sizes.split(",") if s.strip()]
    if min([args.events, *args.sizes]) < 10_000 or not 1 <= args.repeats <= 6:
        p.error("--events and --prune-sizes at least 10000, --repeats 1 to 6")
    if args.day_events < 0 or (args.sizes and min(args.sizes) - args.day_events < 10_000):
        p.error("--day-events must leave 10000 events for the rest of the smallest table")
    if args.skip_run and not args.sizes:
        p.error("--skip-run with empty --prune-sizes: nothing to measure")
    return harness.main("maintenance", args, measure, render, points)


if __name__ == "__main__":
    sys.exit(main())
