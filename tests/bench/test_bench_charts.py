"""The charts `dropwatch bench` draws from the benchmarks' points."""

from __future__ import annotations

from pathlib import Path

from bench.report import _panels, draw

POINTS = {
    "feed": [
        {"metric": "StillOpen, p50", "unit": "ms", "size": 1_000_000, "ours": 2.0, "original": 90},
        {"metric": "StillOpen, p50", "unit": "ms", "size": 100_000, "ours": 1.8, "original": 9},
    ],
    "maintenance": [
        {"metric": "peak RSS", "unit": "MB", "size": 100_000, "ours": 60.0, "original": 500.0},
        {"metric": "peak RSS", "unit": "MB", "size": 1_000_000, "ours": 70.0, "original": None},
        {"metric": "prune a day", "unit": "ms", "size": 100_000, "ours": 30.0, "original": 200},
    ],
}


def test_panels_group_by_metric_with_sizes_ascending() -> None:
    latency = _panels(POINTS, ("ms", "s"))
    assert [p["title"] for p in latency] == ["feed: StillOpen, p50", "maintenance: prune a day"]
    assert latency[0]["sizes"] == [100_000, 1_000_000]
    assert latency[0]["ours"] == [1.8, 2.0] and latency[0]["original"] == [9, 90]
    memory = _panels(POINTS, ("MB",))
    assert memory[0]["original"] == [500.0, None]  # not measured at 1M: no point drawn


def test_draw_writes_both_pngs(tmp_path: Path) -> None:
    written = draw(POINTS, tmp_path / "img")
    assert [p.name for p in written] == ["latency.png", "memory.png"]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_no_memory_points_no_memory_chart(tmp_path: Path) -> None:
    written = draw({"feed": POINTS["feed"]}, tmp_path)
    assert [p.name for p in written] == ["latency.png"]


def test_a_chart_without_points_is_removed_and_zero_is_not_drawn(tmp_path: Path) -> None:
    (tmp_path / "memory.png").write_bytes(b"stale")
    draw({"feed": POINTS["feed"]}, tmp_path)
    assert not (tmp_path / "memory.png").exists()
    zero = {"x": [{"metric": "m", "unit": "ms", "size": 10, "ours": 0.0, "original": 0.0}]}
    assert _panels(zero, ("ms",)) == []
