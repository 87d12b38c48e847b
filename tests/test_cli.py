"""The `dropwatch` command line as a user runs it: subprocesses, real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from shared.db import migrate
from shared.db.engine import make_engine
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    env.update(extra)
    return env


def _dropwatch(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
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


def _postgres_children(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "postgres" and str(data_dir) in cmdline:
            found.append(proc)
    return found


def test_up_starts_embedded_postgres_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    env = _env(DROPWATCH_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    for attempt in range(2):  # the second run reuses the data directory
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if "Press Ctrl-C" in line:
                break
        assert any("schema migrated" in line for line in seen), "".join(seen)
        assert _postgres_children(data_dir), "embedded PostgreSQL is not running"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, "".join(seen) + out
        assert "stopped." in out
        assert _postgres_children(data_dir) == [], f"left behind after run {attempt}"
    assert (data_dir / "pgdata" / "PG_VERSION").exists()
