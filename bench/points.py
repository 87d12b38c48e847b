"""Figures a benchmark hands to `dropwatch bench` for its charts (`--json PATH`).

A point is one figure at one table size, ours beside the original pattern's, so the report can
draw latency and memory against table size from every run of every benchmark.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Point:
    metric: str  # what was measured, e.g. "JustOpened default, p50 at c=1"
    unit: str  # "ms", "s" or "MB": ms and s are latency, MB is memory
    size: int  # drop_events in the table
    ours: float
    original: float | None = None  # the review's pattern on the same data, when measured


def write_points(path: str | None, benchmark: str, points: list[Point]) -> None:
    """Write `points` as JSON to `path` (nothing when no path was asked for)."""
    if not path:
        return
    clean = [
        dataclasses.asdict(p)
        for p in points
        if math.isfinite(p.ours) and (p.original is None or math.isfinite(p.original))
    ]
    Path(path).write_text(json.dumps({"benchmark": benchmark, "points": clean}, indent=1))
