"""`dropwatch bench`: run the benchmarks, write their sections of docs/performance.md and the
charts.

Each benchmark runs as its own process (`python -m bench.NAME --markdown --json FILE`), once per
table size it is charted at; the last (largest) run's section replaces the text between its
markers in the report, so the prose around the sections stays and one benchmark's run replaces
only its own. The points of all its runs replace docs/img/data/NAME.json; the charts are drawn
from every benchmark's file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.charts import draw
from shared.errors import DropwatchError

Runs = tuple[tuple[str, ...], ...]
# name -> (module, its runs (largest table last), the same at small sizes for --quick); the
# daily maintenance run at three sizes (the original's memory grows with the table), the last
# run adding the prune scaling (100k, 1M, 5M)
QUICK_FEED = " --events 200000 --small 50000 --duration 2"
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "seed": ("seed", [""], ["--sizes 20000,100000"]),
    "poll_write": (
        "poll_write",
        ["--events 100000", "--events 1000000"],
        ["--events 20000 --repeats 3", "--events 100000 --repeats 3"],
    ),
    "feed": ("feed", [""], [QUICK_FEED]),
    "feed_uncached": ("feed", ["--cache-ttl 0"], ["--cache-ttl 0" + QUICK_FEED]),
    "maintenance": (
        "maintenance",
        ["--events 100000 --prune-sizes=", "--events 300000 --prune-sizes=", ""],
        ["--events 50000 --prune-sizes=", "--events 200000 --prune-sizes 50000,200000"],
    ),
}
HEADER = (
    "# Performance\n\nFigures of the benchmarks in `bench/`; `dropwatch bench` rewrites them.\n"
)
CHARTS = {
    "latency.png": "Latency against table size (log-log; a flat line does not grow with the table)",
    "memory.png": "Memory against table size",
}
_SECTION = re.compile(r"<!-- bench:(\w+) -->\n(.*?)\n<!-- /bench:\1 -->", re.S)


def sized_runs(name: str, sizes: list[int]) -> Runs:
    """The runs of benchmark `name` at the chosen table sizes (ascending)."""
    joined, biggest, smallest = ",".join(map(str, sizes)), str(sizes[-1]), str(sizes[0])
    if name == "seed":
        return (("--sizes", joined),)
    if name == "poll_write":
        return tuple(("--events", str(s)) for s in sizes)
    if name in ("feed", "feed_uncached"):  # it measures the smallest and the largest
        cache = ("--cache-ttl", "0") if name == "feed_uncached" else ()
        return ((*cache, "--events", biggest, "--small", smallest),)
    # maintenance: the daily run at every size, the prune scaling over all of them at the end;
    # its fixed-size day (36k events) needs 10k events beside it in every table
    daily = [("--events", str(s), "--prune-sizes", "") for s in sizes[:-1]]
    fixed = ("--day-events", "0") if sizes[0] < 46_000 else ()
    return (*daily, ("--events", biggest, "--prune-sizes", joined, *fixed))


def run_benchmarks(
    names: list[str], quick: bool, report: Path, repo: Path, sizes: list[int] | None = None
) -> int:
    if unknown := sorted(set(names) - set(BENCHMARKS)):
        known = ", ".join(BENCHMARKS)
        raise DropwatchError(f"unknown benchmark(s) {', '.join(unknown)}; known: {known}")
    images = report.parent / "img"
    sections = _read_sections(report)
    for name in names or BENCHMARKS:
        module, runs, quick_runs = BENCHMARKS[name]
        points: list[dict[str, Any]] = []
        chosen = [r.split() for r in (quick_runs if quick else runs)]
        for args in sized_runs(name, sizes) if sizes else chosen:
            sections[name], found = _run(module, args, repo)
            points += found
        data = images / "data"
        data.mkdir(parents=True, exist_ok=True)
        (data / f"{name}.json").write_text(json.dumps(points, indent=1) + "\n")
        every = {p.stem: json.loads(p.read_text()) for p in sorted(data.glob("*.json"))}
        charts = draw({k: v for k, v in every.items() if k in BENCHMARKS}, images)
        _write(report, sections, [c.name for c in charts])
        print(f"== {name}: section and charts written to {report}", file=sys.stderr, flush=True)
    return 0


def _run(module: str, args: Sequence[str], repo: Path) -> tuple[str, list[dict[str, Any]]]:
    """One benchmark process: its Markdown section and its points."""
    with tempfile.TemporaryDirectory(prefix="dropwatch-bench-") as tmp:
        points = Path(tmp) / "points.json"
        command = [sys.executable, "-m", f"bench.{module}", "--markdown", *args]
        print(f"== {' '.join(command[1:])}", file=sys.stderr, flush=True)
        result = subprocess.run(
            [*command, "--json", str(points)], cwd=repo, stdout=subprocess.PIPE, text=True
        )
        if result.returncode != 0:
            raise DropwatchError(f"bench.{module} failed with exit code {result.returncode}")
        found = json.loads(points.read_text())["points"] if points.exists() else []
    # The section names the command that produced it; the points file is ours, not the reader's.
    return result.stdout.replace(f" --json {points}", "").strip(), list(found)


def _read_sections(report: Path) -> dict[str, str]:
    text = report.read_text() if report.exists() else ""
    return {m[1]: m[2] for m in _SECTION.finditer(text) if m[1] in BENCHMARKS}


def _write(report: Path, sections: dict[str, str], charts: list[str]) -> None:
    """Replace each section (and the charts) between its markers; append what has none."""
    text = report.read_text() if report.exists() else HEADER
    images = "\n\n".join(f"![{CHARTS[c]}](img/{c})" for c in CHARTS if c in charts)
    bodies = {"charts": images} | {n: sections[n] for n in BENCHMARKS if n in sections}
    for name, body in bodies.items():
        found = re.search(rf"<!-- bench:{name} -->\n.*?<!-- /bench:{name} -->", text, re.S)
        head, tail = (text[: found.start()], text[found.end() :]) if found else (text + "\n", "\n")
        text = f"{head}<!-- bench:{name} -->\n{body}\n<!-- /bench:{name} -->{tail}"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
