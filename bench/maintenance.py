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
from tools.seed import load
from tools.seed.loader import LOADERS

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
        seeded = load(engine, plan)
        vacuum = harness.vacuum(engine, "VACUUM")  # as autovacuum would have by now
        closed = harness.count(
            engine, "SELECT count(*) FROM drop_events WHERE event_type = 'CLOSED'"
        )
        past = harness.count(
            engine, "SELECT count(*) FROM drop_events WHERE bucket_date < :t", t=plan.today
        )
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
    data = (
        f"{seeded.events:,} drop_events ({seeded.events - closed:,} NEW_DROP, {closed:,} CLOSED) "
        f"in {seeded.days} daily partitions (the {sum(d < plan.today for d in plan.days)} past "
        f"days hold {past:,}), {seeded.open_drops + seeded.baseline:,} open_slots; loaded by "
        f"tools.seed ({LOADERS} days at a time) in {seeded.seconds:.1f} s = "
        f'{seeded.events_per_second:,.0f} events/s, then VACUUM ({vacuum:.1f} s). "now" = '
        f"{now.isoformat()} (today {children[0].output.get('today')}, cutoff "
        f"{children[0].output.get('cutoff')}); the review's indexes on the original's copy: "
        f"{index_seconds:.1f} s (untimed)"
    )
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
        ratio = r.original.peak_mb / r.ours.peak_mb
        out += [
            Target(
                f"peak RSS of the whole run < {TARGET_PEAK_MB} MB",
                f"{r.ours.peak_mb:.0f} MB",
                r.ours.peak_mb < TARGET_PEAK_MB,
            ),
            Target(
                f"peak RSS >= {TARGET_PEAK_RATIO}x below the original's",
                f"{ratio:.1f}x ({r.original.peak_mb:,.0f} MB vs {r.ours.peak_mb:.0f} MB)",
                ratio >= TARGET_PEAK_RATIO,
            ),
            Target(
                f"aggregate + prune of {r.events:,} events < {TARGET_AGG_PRUNE_SECONDS} s",
                f"{agg:.2f} s (aggregate + prune_buckets + prune_events steps)",
                agg < TARGET_AGG_PRUNE_SECONDS,
            ),
        ]
    for rows in (report.prune, report.fixed):
        if len(rows) < 2:
            continue
        small, big = min(rows, key=lambda r: r.size), max(rows, key=lambda r: r.size)
        days = [int(median([float(n) for n in r.day_events])) for r in (small, big)]
        if big.fixed_day:
            what = f"fixed-size day ({days[1]:,} events): prune of that day with {big.events:,}"
            what += " events in the table"
        else:
            what = f"day grows with the table ({days[0]:,} -> {days[1]:,} events in the day): "
            what += f"prune of one day at {big.events:,} events"
        ratio = big.ours() / small.ours()
        fastest = min(big.ours_ms) / min(small.ours_ms)
        measured = f"{ratio:.2f}x ({big.ours():.1f} ms vs {small.ours():.1f} ms; fastest "
        measured += f"{fastest:.2f}x); row DELETE: {big.delete() / small.delete():.1f}x "
        measured += f"({big.delete():.1f} ms vs {small.delete():.1f} ms)"
        out.append(
            Target(
                f"{what} <= {TARGET_PRUNE_RATIO}x its time at {small.events:,}",
                measured,
                ratio <= TARGET_PRUNE_RATIO,
            )
        )
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
        body.append(
            ["all steps", "", f"{sum(float(s['seconds']) for s in steps.values()):.3f}", ""]
        )
        section.table(
            ["step (ours)", "rows", "seconds", "detail"], body, "The run, step by step (ours):"
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
        section.table(
            ["part (original)", "seconds", "what"], body, "The original job, part by part:"
        )
        ours_i, orig_i = r.imports
        body = [
            [
                "wall, whole child process (s)",
                f"{r.ours.wall_seconds:.2f}",
                f"{r.original.wall_seconds:.2f}",
                f"{r.original.wall_seconds / r.ours.wall_seconds:.1f}x",
            ],
            [
                "peak RSS, VmHWM (MB)",
                f"{r.ours.peak_mb:.0f}",
                f"{r.original.peak_mb:.0f}",
                f"{r.original.peak_mb / r.ours.peak_mb:.1f}x",
            ],
            [
                "  of which interpreter + imports (MB)",
                f"{ours_i.peak_mb:.0f}",
                f"{orig_i.peak_mb:.0f}",
                "",
            ],
            [
                "  the job's own growth (MB)",
                f"{r.ours.peak_mb - ours_i.peak_mb:.0f}",
                f"{r.original.peak_mb - orig_i.peak_mb:.0f}",
                "",
            ],
            [
                "ru_maxrss from wait4 (MB, for reference)",
                f"{r.ours.maxrss_mb:.0f}",
                f"{r.original.maxrss_mb:.0f}",
                "",
            ],
        ]
        section.table(["", "ours", "original", "original / ours"], body, "Side by side:")
        names = [name for name, _ in LEFT] + ["drop_events partitions left"]
        body = [
            [
                n,
                f"{a:,.1f}" if "duration" in n else f"{a:,.0f}",
                f"{b:,.1f}" if "duration" in n else f"{b:,.0f}",
            ]
            for n, a, b in zip(names, *r.left, strict=True)
        ]
        agree = "yes" if r.agree() else "NO"
        section.table(
            ["left behind", "ours", "original"],
            body,
            f"What each job left behind (both must agree: **{agree}**):",
        )
    for rows, title in (
        (report.prune, "day grows with the table"),
        (
            report.fixed,
            f"fixed-size day of {report.fixed[0].fixed_day:,} events" if report.fixed else "",
        ),
    ):
        if rows:
            main, parts = maintenance_prune.tables(rows)
            section.table(main[0], main[1:], f"Pruning one past day, by table size: **{title}**:")
            section.table(parts[0], parts[1:], f"Where our prune time goes ({title}):")
    return str(section)


def points(report: Report) -> list[Point]:
    out = []
    if (r := report.run) is not None:
        out.append(
            Point(
                "daily run, whole job", "s", r.events, r.ours.wall_seconds, r.original.wall_seconds
            )
        )
        out.append(Point("daily run, peak RSS", "MB", r.events, r.ours.peak_mb, r.original.peak_mb))
    for row in report.prune:
        out.append(
            Point(
                "prune one past day (grows with the table)",
                "ms",
                row.size,
                row.ours(),
                row.delete(),
            )
        )
    for row in report.fixed:
        out.append(
            Point(
                f"prune one {row.fixed_day:,}-event day", "ms", row.size, row.ours(), row.delete()
            )
        )
    return out


def main() -> int:
    p = harness.parser("maintenance", __doc__)
    p.add_argument("--events", type=int, default=1_000_000, help="drop_events to load")
    p.add_argument(
        "--prune-sizes",
        default="100000,1000000,5000000",
        help="table sizes to prune a day at (empty: none)",
    )
    p.add_argument(
        "--day-events",
        type=int,
        default=DAY_EVENTS,
        help="events of every fixed-size pruned day (0: skip)",
    )
    p.add_argument("--repeats", type=int, default=5, help="days pruned per method and size")
    p.add_argument(
        "--skip-run",
        "--only-prune",
        dest="skip_run",
        action="store_true",
        help="prune scaling only",
    )
    args = p.parse_args()
    args.sizes = [int(s) for s in args.prune_sizes.split(",") if s.strip()]
    if (
        min([args.events, *args.sizes]) < 10_000
        or not 1 <= args.repeats <= 6
        or args.day_events < 0
    ):
        p.error("--events and --prune-sizes at least 10000, --repeats 1 to 6, --day-events >= 0")
    if args.day_events and args.sizes and min(args.sizes) - args.day_events < 10_000:
        p.error("--day-events must leave 10000 events for the rest of the smallest table")
    if args.skip_run and not args.sizes:
        p.error("--skip-run with empty --prune-sizes: nothing to measure")
    return harness.main("maintenance", args, measure, render, points)


if __name__ == "__main__":
    sys.exit(main())
