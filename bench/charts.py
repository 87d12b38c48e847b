"""Charts for docs/performance.md: every latency metric (ms, s) in one figure, every memory
metric (MB) in another, one panel per metric, ours beside the original pattern's, both axes
logarithmic (a flat line: the cost does not grow with the table)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any


def draw(points: dict[str, list[dict[str, Any]]], out_dir: Path) -> list[Path]:
    """Write latency.png and memory.png (when there are such points); return the files."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    for name, units, title in (
        ("latency.png", ("ms", "s"), "Latency against table size"),
        ("memory.png", ("MB",), "Memory against table size"),
    ):
        panels = _panels(points, units)
        path = out_dir / name
        if panels:
            out_dir.mkdir(parents=True, exist_ok=True)
            _figure(panels, title, path)
            written.append(path)
        else:
            path.unlink(missing_ok=True)  # no stale chart beside a report that has none
    return written


Panel = dict[str, Any]


def _panels(points: dict[str, list[dict[str, Any]]], units: tuple[str, ...]) -> list[Panel]:
    """One panel per (benchmark, metric) with points in these units, sizes ascending; an
    original's value a log axis cannot show is None (not drawn)."""
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
