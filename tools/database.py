"""The PostgreSQL server the tests and the benchmarks create their databases on.

`DROPWATCH_DATABASE_URL`'s server when it is set, else an embedded PostgreSQL in a temporary
directory (stopped and deleted at the end). Databases are cheap to make: a template migrated
once, then `CREATE DATABASE ... TEMPLATE` per test or per measurement.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from shared.db import embedded, migrate
from shared.db.engine import make_engine
from shared.db.urls import libpq_url, masked_url
from shared.settings import Settings

EXTERNAL_URL_ENV = "DROPWATCH_DATABASE_URL"


class PgServer:
    """Admin access to a server: create, copy and drop databases."""

    def __init__(self, admin_url: str, description: str = "") -> None:
        self.admin_url = admin_url
        self.description = description or masked_url(admin_url)

    def url_for(self, database: str) -> str:
        return libpq_url(self.admin_url, database=database)

    def execute(self, sql: str) -> None:
        """One statement outside a transaction (CREATE/DROP DATABASE need that)."""
        with psycopg.connect(libpq_url(self.admin_url), autocommit=True) as conn:
            conn.execute(sql.encode())

    def server_version_num(self) -> int:
        with psycopg.connect(libpq_url(self.admin_url), autocommit=True) as conn:
            row = conn.execute(b"SHOW server_version_num").fetchone()
            assert row is not None
            return int(row[0])

    @contextmanager
    def database(self, prefix: str, template: str | None = None) -> Iterator[str]:
        """A new database (empty, or a copy of `template`, which must have no connections);
        yields its name and drops it at the end."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        copy = f' TEMPLATE "{template}"' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{copy}')
        try:
            yield name
        finally:
            self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def migrate(self, database: str) -> None:
        """Migrate `database` to head, the way production does."""
        engine = make_engine(Settings(), name="migrate", url=self.url_for(database))
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()

    @contextmanager
    def migrated(self, prefix: str) -> Iterator[str]:
        """A new database migrated to head (to use, or to copy as a template)."""
        with self.database(prefix) as name:
            self.migrate(name)
            yield name


@contextmanager
def pg_server(prefix: str = "dropwatch-") -> Iterator[PgServer]:
    """`DROPWATCH_DATABASE_URL`'s server, or an embedded one for the duration of the block."""
    external = os.environ.get(EXTERNAL_URL_ENV)
    if external:
        yield PgServer(external, f"server {masked_url(external)} ({EXTERNAL_URL_ENV})")
        return
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    server: embedded.EmbeddedServer | None = None
    try:
        server = embedded.start(scratch / "pgdata", temporary=True)
        yield PgServer(server.url, "embedded PostgreSQL in a temporary directory")
    finally:
        if server is not None:
            server.stop()  # deletes pgdata
        shutil.rmtree(scratch, ignore_errors=True)
