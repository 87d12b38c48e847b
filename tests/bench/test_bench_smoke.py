"""The benchmarks still run (at toy sizes): a broken benchmark would otherwise go unnoticed.

Not a timing test: it only checks that each one finishes, prints its targets table and hands
`dropwatch bench` its chart points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

TINY = {
    "seed": ["--sizes", "2000,5000"],
    "poll_write": ["--events", "20000", "--ks", "10", "--repeats", "1"],
    "feed": ["--events", "10000", "--small", "10000", "--duration", "0.5"],
    "watch": ["--streams", "1,4", "--duration", "2", "--release", "20"],
    # one simulated hour around the 09:00 releases, and a short real run of the poller
    "detection": ["--hours", "1", "--start-hour", "8", "--real-seconds", "15"],
    "maintenance": [
        "--events",
        "10000",
        "--prune-sizes",
        "10000",
        "--repeats",
        "1",
        "--day-events",
        "0",
    ],
}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_and_reports_its_targets(name: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    points_file = tmp_path / "points.json"
    command = [sys.executable, "-m", f"bench.{name}", "--markdown", *TINY[name]]
    result = subprocess.run(
        [*command, "--json", str(points_file)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| target | measured | verdict |" in result.stdout
    assert "PASS" in result.stdout or "MISS" in result.stdout
    if name == "seed":  # the target is relative to the floor measured in the same run
        assert "Ceiling at" in result.stdout and "floor: the same rows copied" in result.stdout
        assert "at least 75% of the floor's events/s" in result.stdout
    targets = result.stdout.split("| target | measured | verdict |")[1].split("\n\n")[0]
    assert targets.count("**PASS**") + targets.count("**MISS**") >= 1
    points = json.loads(points_file.read_text())
    assert points["benchmark"] == name
    if name == "detection":  # no figure against table size: no chart points
        assert "| the poller process (real time) |" in result.stdout
        assert "| oracle (knows every drop's start) |" in result.stdout
        assert points["points"] == []
        return
    assert points["points"]
    for p in points["points"]:
        assert p["unit"] in ("ms", "s", "MB") and p["size"] > 0 and p["ours"] > 0
        assert p["original"] is None or p["original"] > 0
