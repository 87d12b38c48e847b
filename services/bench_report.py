"""`dropwatch bench`: run the benchmarks in `bench/` and write docs/performance.md.

Each benchmark runs as its own process (`python -m bench.NAME --markdown`) and prints one
Markdown section with its figures beside the original pattern's. The report keeps one section
per benchmark between markers, so running one benchmark replaces only its own section.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from shared.errors import DropwatchError

# name -> (module in bench/, extra arguments); the feed runs as deployed and without its cache.
BENCHMARKS = {
    "poll_write": ("poll_write", []),
    "feed": ("feed", []),
    "feed_uncached": ("feed", ["--cache-ttl", "0"]),
    "maintenance": ("maintenance", []),
}
# Smaller sizes for a quick look (minutes instead of a quarter of an hour).
QUICK_ARGS = {
    "poll_write": ["--events", "100000", "--repeats", "3"],
    "feed": ["--events", "200000", "--small", "50000", "--duration", "2"],
    "maintenance": ["--events", "200000", "--prune-sizes", "50000,200000"],
}
HEADER = """# Performance

Every hot path named in an issue has a benchmark in `bench/` that prints its figures beside the
naive pattern it replaces, in one run. Benchmarks are not tests: they report numbers. Runs on
this 2-core machine moved 10-20% between runs (other work shares the cores); each section names
the command that produced it. `dropwatch bench` reruns them all and rewrites this file (one
section per benchmark; `dropwatch bench feed` replaces only the feed's).
"""


def run_benchmarks(names: list[str], quick: bool, report: Path, repo: Path) -> int:
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise DropwatchError(
            f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}"
        )
    sections = _read_sections(report)
    for name in names or BENCHMARKS:
        module, extra = BENCHMARKS[name]
        command = [sys.executable, "-m", f"bench.{module}", "--markdown", *extra]
        if quick:
            command += QUICK_ARGS[module]
        print(f"== {' '.join(command[1:])}", file=sys.stderr, flush=True)
        result = subprocess.run(command, cwd=repo, stdout=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise DropwatchError(f"benchmark {name} failed with exit code {result.returncode}")
        sections[name] = result.stdout.strip()
        _write(report, sections)
        print(f"== {name}: section written to {report}", file=sys.stderr, flush=True)
    return 0


_SECTION = re.compile(r"<!-- bench:(\w+) -->\n(.*?)\n<!-- /bench:\1 -->", re.S)


def _read_sections(report: Path) -> dict[str, str]:
    if not report.exists():
        return {}
    return {m.group(1): m.group(2) for m in _SECTION.finditer(report.read_text())}


def _write(report: Path, sections: dict[str, str]) -> None:
    parts = [HEADER]
    for name in BENCHMARKS:
        if name in sections:
            parts.append(f"<!-- bench:{name} -->\n{sections[name]}\n<!-- /bench:{name} -->\n")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(parts))
