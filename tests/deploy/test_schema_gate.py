"""The rollout gate: `python -m shared.db.migrate --wait/--check` (the services' init
containers) lets a pod start only once the schema is at its image's head revision."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from shared.db.migrate import (
    SchemaNotReadyError,
    head_revision,
    upgrade,
    wait_for_head,
)
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.db


@pytest.fixture
def empty_engine(empty_db_url: str) -> Iterator[Engine]:
    engine = create_engine(empty_db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    yield engine
    engine.dispose()


def _run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.db.migrate", *args],
        cwd=REPO_ROOT,
        env=dict(os.environ, DROPWATCH_DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_refuses_an_unmigrated_database_and_accepts_head(empty_db_url: str) -> None:
    refused = _run(empty_db_url, "--check")
    assert refused.returncode == 2, refused.stderr
    assert "database at revision none (no schema)" in refused.stderr
    assert f"this image needs {head_revision()}" in refused.stderr
    assert "run the migrations first" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _run(empty_db_url).returncode == 0
    accepted = _run(empty_db_url, "--check")
    assert accepted.returncode == 0, accepted.stderr
    assert f"database at revision {head_revision()}, this image's head" in accepted.stdout


def test_wait_returns_once_another_process_has_migrated(empty_engine: Engine) -> None:
    looked = threading.Event()
    outcome: list[str | BaseException] = []

    def sleep(_seconds: float) -> None:
        looked.set()  # the waiter has seen the old schema at least once

    def waiter() -> None:
        try:
            outcome.append(wait_for_head(empty_engine, timeout=120, interval=0.05, sleep=sleep))
        except BaseException as exc:  # reported below
            outcome.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert looked.wait(60)
    upgrade(empty_engine)
    thread.join(120)
    assert not thread.is_alive()
    assert outcome == [f"database at revision {head_revision()}, this image's head"]


def test_wait_is_bounded_and_says_what_to_do(empty_engine: Engine) -> None:
    upgrade(empty_engine, "0001")
    with pytest.raises(SchemaNotReadyError) as raised:
        wait_for_head(empty_engine, timeout=0.2, interval=0.05)
    message = str(raised.value)
    assert f"database at revision 0001, this image needs {head_revision()}" in message
    assert "waited 0.2 s" in message and "python -m shared.db.migrate" in message


def test_an_unreachable_database_is_waited_for_not_a_crash() -> None:
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(SchemaNotReadyError, match="cannot reach PostgreSQL"):
        wait_for_head(engine, timeout=0.1, interval=0.05)


def test_a_newer_schema_lets_an_older_image_start(empty_engine: Engine) -> None:
    """A rollback: the database was migrated by a newer release this image does not know."""
    upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    assert "newer than this image's head" in wait_for_head(empty_engine, timeout=0)
