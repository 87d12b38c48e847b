"""The daily maintenance run against the original job, and pruning one day at several table
sizes against the original row DELETE (docs/performance.md, Daily maintenance run)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import text

from bench import harness, maintenance_prune
from bench.harness import Point, Section, Target, engine_for
from services.maintenance.settings import MaintenanceSettings
from shared.db.partitions import list_partitions
from tools.database import PgServer

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


def left_behind(url: str) -> list[float]:
    with (engine := engine_for(url, "bench-check")).connect() as conn:
        values = [float(conn.execute(text(sql)).scalar_one() or 0) for _, sql in LEFT]
        values.append(float(len(list_partitions(conn))))
    engine.dispose()
    return values


# Run with `python -c`: the job named by argv[2] (ours, original, or a module to import only).
# The peak is the child's own VmHWM, written to argv[1] at exit (wait4's ru_maxrss also counts
# the parent's RSS at fork, so it is shown for reference only).
CHILD = """\
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
else:
    __import__(sys.argv[2])
"""
IMPORTS = ("services.maintenance.__main__", "bench.maintenance_original")  # ours, the original's


class Child(NamedTuple):
    wall_seconds: float  # spawn to exit, interpreter start and imports included
    peak_mb: float  # VmHWM of the child itself
    maxrss_mb: float  # wait4's ru_maxrss
    output: dict[str, Any]  # its last JSON line


def run_child(kind: str, now: dt.datetime, url: str = "") -> Child:
    """One child to the end; its environment has no DROPWATCH_* but the database URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    env |= {"DROPWATCH_DATABASE_URL": url} if url else {}
    with tempfile.TemporaryDirectory(prefix="dw-bench-child-") as scratch:
        peak, err = Path(scratch) / "peak.json", Path(scratch) / "stderr"
        args = ["-c", CHILD, str(peak), kind, now.isoformat()]
        with (
            harness.Timer() as wall,
            err.open("wb") as stderr,
            harness.child(args, env, stdout=subprocess.PIPE, stderr=stderr) as proc,
        ):
            assert proc.stdout is not None
            out = proc.stdout.read().decode()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            proc.stdout.close()
        if proc.returncode != 0:
            raise SystemExit(f"child {kind} exited {proc.returncode}:\n{err.read_text()[-4000:]}")
        peak_kb = int(json.loads(peak.read_text()))
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return Child(wall.seconds, peak_kb / 1024, usage.ru_maxrss / 1024, lines[-1] if lines else {})


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
        engine = engine_for(server.url_for(template), "bench-load")
        plan = maintenance_prune.seed_plan(events, now)
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


Result = tuple[Run, list[list[maintenance_prune.Pruned]]]  # the run; prunes: growing, fixed day


def measure(server: PgServer, args: argparse.Namespace) -> Result:
    """The run; then the prunes, one after the other (each drops its databases first)."""
    zone = MaintenanceSettings().zone
    now = dt.datetime.combine(dt.datetime.now(zone).date(), dt.time(7, 5), tzinfo=zone)
    if now > dt.datetime.now(zone):  # `run --now` refuses a time ahead of the database clock
        now -= dt.timedelta(days=1)
    run = measure_run(server, args.events, now)
    days = [0, args.day_events] if args.day_events else [0]  # events of a pruned day; 0: grows
    sizes, repeats = args.prune_sizes, args.repeats
    return run, [maintenance_prune.measure(server, sizes, now, repeats, d) for d in days]


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
    section.targets(targets(r) + [t for rows in prunes for t in maintenance_prune.targets(rows)])
    steps = r.ours.output["steps"]
    body = []
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
    return points + [p for rows in prunes for p in maintenance_prune.render(rows, section)]


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
