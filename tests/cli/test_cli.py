"""The `dropwatch` command line as a user runs it: subprocesses, real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.db import migrate
from shared.db.engine import make_engine
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    env.update(extra)
    return env


def _dropwatch(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_migrate_brings_an_empty_database_to_head(empty_db_url: str) -> None:
    result = _dropwatch("migrate", env=_env(DROPWATCH_DATABASE_URL=empty_db_url))
    assert result.returncode == 0, result.stderr
    assert f"revision {migrate.head_revision()}" in result.stdout
    engine = make_engine(Settings(), name="check", url=empty_db_url)
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"DROPWATCH_DATABASE_URL": "mysql://u:topsecret@h/db"}, "DROPWATCH_DATABASE_URL"),
        ({"DROPWATCH_DB_POOL_SIZE": "lots"}, "DROPWATCH_DB_POOL_SIZE"),
    ],
)
def test_configuration_errors_are_one_line_without_secrets(
    env: dict[str, str], fragment: str
) -> None:
    result = _dropwatch("migrate", env=_env(**env))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dropwatch: error: ")
    assert fragment in lines[0]
    assert "topsecret" not in result.stderr + result.stdout


def test_unreachable_database_is_one_line_without_password() -> None:
    url = "postgresql://svc:hunter22@127.0.0.1:1/nowhere?connect_timeout=2"
    result = _dropwatch("migrate", env=_env(DROPWATCH_DATABASE_URL=url))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "cannot reach PostgreSQL" in result.stderr
    assert "hunter22" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["nope"], "invalid choice"),
        (["feed", "just-opened", "--limit", "x"], "invalid int value"),
        (["poll"], "--once"),
        (["maintenance", "run", "--now", "yesterday"], "ISO-8601"),
        (["seed", "--events", "-5"], "positive"),
    ],
)
def test_bad_flags_and_values_are_one_line_errors(args: list[str], fragment: str) -> None:
    result = _dropwatch(*args, env=_env(DROPWATCH_DATABASE_URL="postgresql://u@127.0.0.1:1/x"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert fragment in lines[0]


def test_help_lists_every_command() -> None:
    result = _dropwatch("--help", env=_env())
    for command in ("up", "migrate", "serve", "poll", "seed", "maintenance", "feed"):
        assert f"    {command}" in result.stdout


def test_bench_report_keeps_one_section_per_benchmark(tmp_path: Path) -> None:
    from bench.report import _read_sections, _write

    report = tmp_path / "performance.md"
    _write(report, {"feed": "## Feed\nold", "maintenance": "## Maintenance\nkept"}, [])
    sections = _read_sections(report)
    sections["feed"] = "## Feed\nnew"
    _write(report, sections, ["latency.png"])
    text = report.read_text()
    assert "new" in text and "old" not in text and "kept" in text
    assert text.index("## Feed") < text.index("## Maintenance")
    assert "(img/latency.png)" in text and "memory.png" not in text


def test_bench_sizes_become_each_benchmarks_runs() -> None:
    from bench.report import sized_runs

    sizes = [100_000, 1_000_000]
    assert sized_runs("seed", sizes) == (("--sizes", "100000,1000000"),)
    assert sized_runs("poll_write", sizes) == (("--events", "100000"), ("--events", "1000000"))
    assert sized_runs("feed_uncached", sizes) == (
        ("--cache-ttl", "0", "--events", "1000000", "--small", "100000"),
    )
    assert sized_runs("maintenance", sizes) == (
        ("--events", "100000", "--prune-sizes", ""),
        ("--events", "1000000", "--prune-sizes", "100000,1000000"),
    )
    assert sized_runs("maintenance", [20_000])[-1][-2:] == ("--day-events", "0")


def test_bench_size_flags_are_checked() -> None:
    both = _dropwatch("bench", "--quick", "--sizes", "100000", env=_env())
    assert both.returncode == 2 and "not allowed with" in both.stderr
    tiny = _dropwatch("bench", "--sizes", "500", env=_env())
    assert tiny.returncode == 2 and "at least 10000" in tiny.stderr
    assert "Traceback" not in both.stderr + tiny.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_writes_the_report_its_points_and_charts(tmp_path: Path) -> None:
    """`dropwatch bench seed` end to end, at a toy size, into a scratch docs folder."""
    report = tmp_path / "docs" / "performance.md"
    result = _dropwatch(
        "bench", "seed", "--sizes", "10000", "--report", str(report), env=_env(), timeout=280
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = report.read_text()
    assert "<!-- bench:seed -->" in text and "| target | measured | verdict |" in text
    assert "--json" not in text  # the section names the command a reader would run
    assert "(img/latency.png)" in text
    points = json.loads((tmp_path / "docs" / "img" / "data" / "seed.json").read_text())
    assert points[0]["size"] > 9000 and points[0]["original"] > 0
    assert (tmp_path / "docs" / "img" / "latency.png").read_bytes().startswith(b"\x89PNG")


def test_bench_rejects_unknown_names() -> None:
    result = _dropwatch("bench", "nonsense", env=_env())
    assert result.returncode == 2 and "unknown benchmark" in result.stderr


def test_serve_refuses_a_port_another_grpc_server_holds(db_url: str) -> None:
    """gRPC servers share a port by default (SO_REUSEPORT): a second feed would split the
    calls with the first one instead of failing."""
    from concurrent import futures

    import grpc

    holder = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = holder.add_insecure_port("127.0.0.1:0")
    holder.start()
    try:
        result = _dropwatch(
            "serve",
            "feed",
            "--port",
            str(port),
            "--metrics-port",
            "0",
            env=_env(DROPWATCH_DATABASE_URL=db_url, DROPWATCH_BIND_HOST="127.0.0.1"),
            timeout=30,
        )
    finally:
        holder.stop(None)
    assert result.returncode != 0
    assert "bind" in result.stderr.lower()
