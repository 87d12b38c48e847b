"""The embedded PostgreSQL as `make run` meets it: a checkout path with a space in it, and a
user of the server that died without saying so (a killed `up`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest

from shared.db import embedded
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("DROPWATCH_DATABASE_URL")), reason="checks the embedded server only"
)


def _postmaster(pgdata: Path) -> psutil.Process:
    return psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))


def test_a_data_directory_whose_path_has_a_space_works(tmp_path: Path) -> None:
    pgdata = tmp_path / "my projects" / "drop watch" / "pgdata"
    server = embedded.start(pgdata, temporary=True)
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert " " not in server.url  # the socket lives in a directory pg_ctl can take
    finally:
        server.stop()
    assert not pgdata.exists()


def test_a_user_that_died_does_not_keep_the_server_running(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    # A process starts the server and is killed before it can stop it (as a killed `up`).
    code = (
        "import os, sys; from pathlib import Path; from shared.db import embedded; "
        "embedded.start(Path(sys.argv[1])); os.kill(os.getpid(), 9)"
    )
    subprocess.run([sys.executable, "-c", code, str(pgdata)], cwd=REPO_ROOT, timeout=60)
    dead = json.loads((pgdata / embedded.USERS_FILE).read_text())
    assert dead and not any(psutil.pid_exists(pid) for pid in dead)
    postmaster = _postmaster(pgdata)
    assert postmaster.is_running()

    server = embedded.start(pgdata)  # attaches to the running server, forgets the dead
    assert json.loads((pgdata / embedded.USERS_FILE).read_text()) == [os.getpid()]
    server.stop()
    postmaster.wait(timeout=30)  # stopped by its last live user
    assert not postmaster.is_running()
