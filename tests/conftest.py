"""Real PostgreSQL for every database test (`tools.database`, shared with the benchmarks).

The server is the one `DROPWATCH_DATABASE_URL` names, or an embedded PostgreSQL in a temporary
directory. One template database is migrated per session; every test gets its own copy
(`CREATE DATABASE ... TEMPLATE ...`), so tests are isolated and cheap.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine

from shared.db.engine import make_engine
from shared.settings import Settings
from tools.database import EXTERNAL_URL_ENV, PgServer
from tools.database import pg_server as start_server

__all__ = ["EXTERNAL_URL_ENV", "REPO_ROOT", "PgServer", "free_port"]

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with start_server("dropwatch-test-") as server:
        yield server


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> Iterator[str]:
    """A database migrated to head once per session, used only as a template."""
    with pg_server.migrated("dw_tpl") as name:
        yield name


@pytest.fixture
def empty_db_url(pg_server: PgServer) -> Iterator[str]:
    """A brand-new database with no schema at all."""
    with pg_server.database("dw_empty") as name:
        yield pg_server.url_for(name)


@pytest.fixture
def db_url(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """A private, migrated database for one test."""
    with pg_server.database("dw_t", template=template_db) as name:
        yield pg_server.url_for(name)


@pytest.fixture
def settings(db_url: str) -> Settings:
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


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
