"""Run Alembic migrations (`python -m shared.db.migrate`, `dropwatch migrate`).

Migrations are the only way the schema is created or changed. A session-level advisory lock
makes concurrent migrators (several pods starting at once) wait for each other.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from shared.db.contracts import MIGRATE_LOCK
from shared.db.engine import unavailable_as_error
from shared.db.locks import session_lock

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision` (default: the newest)."""
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    _run(engine, "downgrade", revision)


def _run(engine: Engine, action: str, revision: str) -> None:
    config = alembic_config()
    with (
        unavailable_as_error(),
        engine.connect() as conn,
        session_lock(conn, MIGRATE_LOCK),
    ):
        config.attributes["connection"] = conn
        getattr(command, action)(config, revision)
        conn.commit()


def current_revision(engine: Engine) -> str | None:
    with unavailable_as_error(), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def migrate_database(revision: str = "head") -> None:
    """Start up from the environment, migrate to `revision` and say where the database is."""
    from shared.settings import Settings
    from shared.startup import started

    with started(Settings, "migrate") as up:
        upgrade(up.engine, revision)
        print(f"database at revision {current_revision(up.engine)}")


def main(argv: Sequence[str] | None = None) -> int:
    """The production migration entry point (the Kubernetes Job runs it)."""
    from shared.startup import exit_code

    parser = argparse.ArgumentParser(prog="python -m shared.db.migrate")
    parser.add_argument("--revision", default="head", help="target revision (default: head)")
    args = parser.parse_args(argv)

    def migrate() -> int:
        migrate_database(args.revision)
        return 0

    return exit_code("migrate", migrate)


if __name__ == "__main__":
    sys.exit(main())
