"""Real PostgreSQL for every database test.

The server is the one `DROPWATCH_DATABASE_URL` names, or an embedded PostgreSQL in a temporary
directory. One template database is migrated per session; every test gets its own copy
(`CREATE DATABASE ... TEMPLATE ...`), so tests are isolated and cheap.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from shared.db import embedded, migrate
from shared.db.engine import make_engine
from shared.settings import Settings

EXTERNAL_URL_ENV = "DROPWATCH_DATABASE_URL"


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _libpq(url: str) -> str:
    """psycopg wants libpq syntax without the `+psycopg` driver suffix."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgServer:
    """Admin access to the test server: create and drop databases."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    def url_for(self, database: str) -> str:
        return _with_database(self.admin_url, database)

    def execute(self, sql: str) -> None:
        with psycopg.connect(_libpq(self.admin_url), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def server_version_num(self) -> int:
        with psycopg.connect(_libpq(self.admin_url), autocommit=True) as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
            assert row is not None
            return int(row[0])


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get(EXTERNAL_URL_ENV)
    if external:
        yield PgServer(external)
        return
    parent = Path(tempfile.mkdtemp(prefix="dropwatch-test-"))
    server = embedded.start(parent / "pgdata", temporary=True)
    try:
        yield PgServer(server.url)
    finally:
        server.stop()  # deletes pgdata
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> Iterator[str]:
    """A database migrated to head once per session, used only as a template."""
    name = f"dw_tpl_{uuid.uuid4().hex[:10]}"
    pg_server.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(Settings(), name="template", url=pg_server.url_for(name))
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    try:
        yield name
    finally:
        pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db_url(pg_server: PgServer) -> Iterator[str]:
    """A brand-new database with no schema at all."""
    name = f"dw_empty_{uuid.uuid4().hex[:10]}"
    pg_server.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_server.url_for(name)
    finally:
        pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """A private, migrated database for one test."""
    name = f"dw_t_{uuid.uuid4().hex[:12]}"
    pg_server.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        yield pg_server.url_for(name)
    finally:
        pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(db_url: str) -> Settings:
    from pydantic import SecretStr

    return Settings(database_url=SecretStr(db_url))


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings, name="test")
    try:
        yield eng
    finally:
        eng.dispose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that touches PostgreSQL `db`, so CI can rerun them on another server."""
    for item in items:
        if "pg_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)


REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
