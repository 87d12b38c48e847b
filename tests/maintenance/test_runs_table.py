"""Every maintenance run records itself in `maintenance_runs` (when, outcome, its JSON
summary), so the last success is known without the Pushgateway."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from sqlalchemy import Engine, text

from services.maintenance.__main__ import main

pytestmark = pytest.mark.db


@pytest.fixture
def job_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("DROPWATCH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DROPWATCH_DATABASE_URL", db_url)


def _runs(engine: Engine) -> list[tuple[str, dict[str, object], dt.datetime, dt.datetime]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT outcome, summary, started_at, finished_at FROM maintenance_runs"
                " WHERE outcome <> 'installed' ORDER BY id"
            )
        ).all()
    return [(r.outcome, r.summary, r.started_at, r.finished_at) for r in rows]


@pytest.mark.usefixtures("job_env")
def test_a_successful_run_records_its_summary(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ((outcome, summary, started_at, finished_at),) = _runs(engine)
    assert outcome == "succeeded"
    assert summary == printed and summary["ran"] is True
    assert started_at <= finished_at


@pytest.mark.usefixtures("job_env")
def test_a_failed_run_is_recorded_with_its_error(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    ahead = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).isoformat()
    assert main(["run", "--now", ahead]) == 2
    assert "ahead of the database clock" in capsys.readouterr().err
    ((outcome, summary, _, _),) = _runs(engine)
    assert outcome == "failed"
    assert summary["ok"] is False and "ahead of the database clock" in str(summary["error"])


@pytest.mark.usefixtures("job_env")
def test_old_runs_are_pruned_when_a_run_records_itself(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO maintenance_runs (started_at, finished_at, outcome, summary) "
                "VALUES (now() - interval '200 days', now() - interval '200 days', "
                "'succeeded', '{}'), (now() - interval '2 days', now() - interval '2 days', "
                "'failed', '{}')"
            )
        )
    assert main(["run"]) == 0
    assert [outcome for outcome, *_ in _runs(engine)] == ["failed", "succeeded"]


def test_the_migration_marks_when_recording_began(engine: Engine) -> None:
    with engine.connect() as conn:
        (row,) = conn.execute(
            text("SELECT outcome, summary FROM maintenance_runs WHERE outcome = 'installed'")
        ).all()
    assert "migration 0009" in str(row.summary["message"])
