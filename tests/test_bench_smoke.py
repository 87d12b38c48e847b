"""The benchmarks still run (at toy sizes): a broken benchmark would otherwise go unnoticed.

Not a timing test: it only checks that each one finishes and prints its targets table.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

TINY = {
    "poll_write": ["--events", "20000", "--ks", "10", "--repeats", "1"],
    "feed": ["--events", "10000", "--small", "10000", "--duration", "0.5"],
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


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_and_reports_its_targets(name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--markdown", *TINY[name]],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| target | measured | verdict |" in result.stdout
    assert "PASS" in result.stdout or "MISS" in result.stdout
