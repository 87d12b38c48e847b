"""`dropwatch bench`: run the benchmarks in `bench/`, write docs/performance.md and its charts.

Each benchmark runs as its own process (`python -m bench.NAME --markdown --json FILE`), once
per table size it is charted at; the last (largest) run's Markdown section, its figures beside
the original pattern's, goes into the report between markers, so running one benchmark
replaces only its own section. The points of all its runs (a figure at a table size, ours and
the original's) replace docs/img/data/NAME.json, and the charts are redrawn from every
benchmark's file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.charts import draw
from shared.errors import DropwatchError


@dataclass(frozen=True)
class Benchmark:
    module: str  # bench/<module>.py
    runs: tuple[tuple[str, ...], ...]  # arguments of each run, largest table last
    quick: tuple[tuple[str, ...], ...]  # the same at small sizes (minutes, not a quarter hour)


# The feed runs as deployed and without its answer cache. The seed and feed benchmarks measure
# several table sizes in one run; the poller's write and the daily run are run once per size.
BENCHMARKS = {
    "seed": Benchmark("seed", runs=((),), quick=(("--sizes", "20000,100000"),)),
    "poll_write": Benchmark(
        "poll_write",
        runs=(("--events", "100000"), ("--events", "1000000")),
        quick=(("--events", "20000", "--repeats", "3"), ("--events", "100000", "--repeats", "3")),
    ),
    "feed": Benchmark(
        "feed",
        runs=((),),
        quick=(("--events", "200000", "--small", "50000", "--duration", "2"),),
    ),
    "feed_uncached": Benchmark(
        "feed",
        runs=(("--cache-ttl", "0"),),
        quick=(("--cache-ttl", "0", "--events", "200000", "--small", "50000", "--duration", "2"),),
    ),
    # The daily run's memory at three sizes (the original's grows with the table); the last
    # run adds the prune scaling (100k, 1M, 5M).
    "maintenance": Benchmark(
        "maintenance",
        runs=(
            ("--events", "100000", "--prune-sizes", ""),
            ("--events", "300000", "--prune-sizes", ""),
            (),
        ),
        quick=(
            ("--events", "50000", "--prune-sizes", ""),
            ("--events", "200000", "--prune-sizes", "50000,200000"),
        ),
    ),
}
HEADER = """# Performance

Every hot path named in an issue has a benchmark in `bench/` that prints its figures beside the
naive pattern it replaces, in one run. Benchmarks are not tests: they report numbers. Runs on
this 2-core machine moved 10-30% between runs (other work shares the cores); each section names
the command that produced it. `dropwatch bench` reruns them all and rewrites this file and the
charts (one section per benchmark; `dropwatch bench feed` replaces only the feed's).
"""
CHARTS = {
    "latency.png": "Latency against table size (log-log; a flat line does not grow with the table)",
    "memory.png": "Memory against table size",
}


def sized_runs(name: str, sizes: list[int]) -> tuple[tuple[str, ...], ...]:
    """The runs of benchmark `name` at the chosen table sizes (ascending)."""
    joined = ",".join(str(s) for s in sizes)
    biggest, smallest = str(sizes[-1]), str(sizes[0])
    if name == "seed":
        return (("--sizes", joined),)
    if name == "poll_write":
        return tuple(("--events", str(s)) for s in sizes)
    if name in ("feed", "feed_uncached"):  # it measures two sizes: the smallest and largest
        cache = ("--cache-ttl", "0") if name == "feed_uncached" else ()
        return ((*cache, "--events", biggest, "--small", smallest),)
    # maintenance: the daily run at every size, the prune scaling over all of them at the end
    daily = [("--events", str(s), "--prune-sizes", "") for s in sizes[:-1]]
    # its fixed-size-day part needs every table to hold a day (bench.maintenance.DAY_EVENTS,
    # 36k events) and MIN_EVENTS (10k) more
    fixed = ("--day-events", "0") if sizes[0] < 46_000 else ()
    return (*daily, ("--events", biggest, "--prune-sizes", joined, *fixed))


def run_benchmarks(
    names: list[str], quick: bool, report: Path, repo: Path, sizes: list[int] | None = None
) -> int:
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise DropwatchError(
            f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}"
        )
    images = report.parent / "img"
    sections = _read_sections(report)
    for name in names or BENCHMARKS:
        bench = BENCHMARKS[name]
        points: list[dict[str, Any]] = []
        runs = bench.quick if quick else bench.runs
        if sizes:
            runs = sized_runs(name, sizes)
        for args in runs:
            markdown, found = _run(bench.module, args, repo)
            points += found
            sections[name] = markdown
        _write_points(images / "data" / f"{name}.json", points)
        charts = draw(_read_points(images / "data"), images)
        _write(report, sections, [c.name for c in charts])
        print(f"== {name}: section and charts written to {report}", file=sys.stderr, flush=True)
    return 0


def _run(module: str, args: tuple[str, ...], repo: Path) -> tuple[str, list[dict[str, Any]]]:
    """One benchmark process: its Markdown section and its points."""
    with tempfile.TemporaryDirectory(prefix="dropwatch-bench-") as tmp:
        points_file = Path(tmp) / "points.json"
        command = [sys.executable, "-m", f"bench.{module}", "--markdown", *args]
        command += ["--json", str(points_file)]
        print(f"== {' '.join(command[1:-2])}", file=sys.stderr, flush=True)
        result = subprocess.run(command, cwd=repo, stdout=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise DropwatchError(f"bench.{module} failed with exit code {result.returncode}")
        found = json.loads(points_file.read_text())["points"] if points_file.exists() else []
    # The section names the command that produced it; the points file is ours, not the reader's.
    return result.stdout.replace(f" --json {points_file}", "").strip(), list(found)


def _write_points(path: Path, points: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(points, indent=1) + "\n")


def _read_points(folder: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        path.stem: list(json.loads(path.read_text()))
        for path in sorted(folder.glob("*.json"))
        if path.stem in BENCHMARKS
    }


_SECTION = re.compile(r"<!-- bench:(\w+) -->\n(.*?)\n<!-- /bench:\1 -->", re.S)


def _read_sections(report: Path) -> dict[str, str]:
    if not report.exists():
        return {}
    return {m.group(1): m.group(2) for m in _SECTION.finditer(report.read_text())}


def _write(report: Path, sections: dict[str, str], charts: list[str]) -> None:
    parts = [HEADER]
    if charts:
        parts.append(
            "\n".join(f"![{CHARTS[c]}](img/{c})\n" for c in CHARTS if c in charts)
            + "\nPoints from every run are in `docs/img/data/`; the tables below are the "
            "largest run of each benchmark.\n"
        )
    for name in BENCHMARKS:
        if name in sections:
            parts.append(f"<!-- bench:{name} -->\n{sections[name]}\n<!-- /bench:{name} -->\n")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(parts))
