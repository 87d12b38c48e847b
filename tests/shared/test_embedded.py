"""The embedded development server: configured once for bulk loads, reused as it is."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from shared.db import embedded

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("DROPWATCH_DATABASE_URL")), reason="checks the embedded server only"
)


def _show(url: str, name: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.slow
def test_new_data_directory_runs_with_minimal_wal_and_keeps_it(tmp_path: Path) -> None:
    server = embedded.start(tmp_path / "pgdata")
    try:
        assert _show(server.url, "wal_level") == "minimal"
        assert _show(server.url, "max_wal_senders") == "0"
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
    finally:
        server.stop()
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()  # "stop" keeps the data
    again = embedded.start(tmp_path / "pgdata", temporary=True)
    try:
        assert _show(again.url, "wal_level") == "minimal"
        with psycopg.connect(again.url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    finally:
        again.stop()
    assert not (tmp_path / "pgdata").exists()  # temporary: deleted at the end
