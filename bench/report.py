"""`dropwatch bench`: each benchmark as its own process per table size; the largest run's section
replaces the text between its markers, its points docs/img/data/NAME.json; the log-log charts."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.errors import DropwatchError

Runs = tuple[tuple[str, ...], ...]
# name -> (module, its runs (largest table last), the same at small sizes for --quick); the
# daily maintenance run at three sizes (the original's memory grows with the table), the last
# run adding the prune scaling (100k, 1M, 5M)
QUICK_FEED = " --events 200000 --small 50000 --duration 2"
QUICK_POLL = ["--events 20000 --repeats 3", "--events 100000 --repeats 3"]
DAILY = ["--events 100000 --prune-sizes=", "--events 300000 --prune-sizes=", ""]
QUICK_DAILY = ["--events 50000 --prune-sizes=", "--events 200000 --prune-sizes 50000,200000"]
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "seed": ("seed", [""], ["--sizes 20000,100000"]),
    "poll_write": ("poll_write", ["--events 100000", "--events 1000000"], QUICK_POLL),
    "feed": ("feed", [""], [QUICK_FEED]),
    "feed_uncached": ("feed", ["--cache-ttl 0"], ["--cache-ttl 0" + QUICK_FEED]),
    "maintenance": ("maintenance", DAILY, QUICK_DAILY),
    # WatchDrops: stream counts, not table sizes (its points are not charted)
    "watch": ("watch", [""], ["--streams 1,100 --duration 8 --release 100"]),
    # detection: a simulated day and a real poller run; no table size (not charted)
    "detection": ("detection", [""], ["--hours 2 --start-hour 8 --real-seconds 30"]),
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
    if name == "watch":  # no table size to choose: its own run
        return ((),)
    if name == "detection":  # virtual time and a real run: no table size either
        return ((),)
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
    images, sections = report.parent / "img", _read_sections(report)
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
        charted = set(BENCHMARKS) - {"watch"}  # watch's x is not a table size
        charted -= {"detection"}  # nor is detection's
        charts = draw({k: v for k, v in every.items() if k in charted}, images)
        _write(report, sections, [c.name for c in charts])
        print(f"== {name}: section and charts written to {report}", file=sys.stderr, flush=True)
    return 0


def _run(module: str, args: Sequence[str], repo: Path) -> tuple[str, list[dict[str, Any]]]:
    """One benchmark process: its Markdown section and its points."""
    with tempfile.TemporaryDirectory(prefix="dropwatch-bench-") as tmp:
        points = Path(tmp) / "points.json"
        command = [sys.executable, "-m", f"bench.{module}", "--markdown", *args]
        print(f"== {' '.join(command[1:])}", file=sys.stderr, flush=True)
        argv = [*command, "--json", str(points)]
        result = subprocess.run(argv, cwd=repo, stdout=subprocess.PIPE, text=True)
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


def draw(points: dict[str, list[dict[str, Any]]], out_dir: Path) -> list[Path]:
    """Write latency.png and memory.png (when there are such points); return the files."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    for name, units in (("latency.png", ("ms", "s")), ("memory.png", ("MB",))):
        title = CHARTS[name].split(" (")[0]
        panels, path = _panels(points, units), out_dir / name
        if panels:
            out_dir.mkdir(parents=True, exist_ok=True)
            _figure(panels, title, path)
            written.append(path)
        else:
            path.unlink(missing_ok=True)  # no stale chart beside a report that has none
    return written


Panel = dict[str, Any]


def _panels(points: dict[str, list[dict[str, Any]]], units: tuple[str, ...]) -> list[Panel]:
    """One panel per (benchmark, metric) in these units; an original's value <= 0 is None."""
    grouped: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for benchmark, items in points.items():
        for p in items:  # a later run at the same size replaces an earlier one
            if p["unit"] in units and p["ours"] > 0:
                grouped[(benchmark, p["metric"], p["unit"])][int(p["size"])] = p
    panels = []
    for (benchmark, metric, unit), by_size in sorted(grouped.items()):
        sizes = sorted(by_size)
        original = [by_size[s].get("original") for s in sizes]
        panel = {"title": f"{benchmark}: {metric}", "unit": unit, "sizes": sizes}
        panel["ours"] = [float(by_size[s]["ours"]) for s in sizes]
        panels.append(panel | {"original": [float(v) if v and v > 0 else None for v in original]})
    return panels


def _size_label(value: float, _pos: object = None) -> str:
    """100000 -> 100k, 1000000 -> 1M: table sizes as people say them."""
    scale, unit = next(((v, u) for v, u in ((1e6, "M"), (1e3, "k")) if value >= v), (1, ""))
    return f"{value / scale:g}{unit}"


def _value_label(value: float, _pos: object = None) -> str:
    """Label 1, 2 and 5 times a power of ten only, so minor ticks do not crowd."""
    lead = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
    return f"{value:g}" if lead in (1, 2, 5) else ""


def _figure(panels: list[Panel], title: str, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        sizes = panel["sizes"]
        ax.plot(sizes, panel["ours"], "o-", color="tab:blue", label="dropwatch")
        pairs = [(s, v) for s, v in zip(sizes, panel["original"], strict=True) if v is not None]
        if pairs:
            xs, ys = zip(*pairs, strict=True)
            ax.plot(xs, ys, "s--", color="tab:red", label="original (naive) pattern")
        ax.set(xscale="log", yscale="log", xlabel="drop_events in the table", ylabel=panel["unit"])
        ax.xaxis.set_major_formatter(FuncFormatter(_size_label))
        ax.yaxis.set_major_formatter(FuncFormatter(_value_label))
        ax.yaxis.set_minor_formatter(FuncFormatter(_value_label))
        ax.set_title(panel["title"], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
