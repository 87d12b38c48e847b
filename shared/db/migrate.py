"""Run Alembic migrations (`python -m shared.db.migrate`, `dropwatch migrate`).

Migrations are the only way the schema is created or changed. A session-level advisory lock
makes concurrent migrators (several pods starting at once) wait for each other.

`--wait` and `--check` change nothing: the services' init containers run `--wait` so that pods
of a new release start only once the schema is at the revision their image was built with,
whatever order a single `kubectl apply -k` (or a GitOps tool) creates things in.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from shared.db.contracts import MIGRATE_LOCK
from shared.db.engine import unavailable_as_error
from shared.db.locks import session_lock
from shared.errors import DatabaseUnavailableError, DropwatchError

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


class SchemaNotReadyError(DropwatchError):
    """The database did not reach this image's head revision in time."""


def schema_state(engine: Engine) -> tuple[bool, str]:
    """(ready, what to say): ready when the database is at this image's head, or at a revision
    this image does not know (a newer release migrated it: a rollback must still start)."""
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return True, f"database at revision {current}, this image's head"
    known = {
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    }
    if current is not None and current not in known:
        return True, (
            f"database at revision {current}, newer than this image's head {head} "
            "(a rollback: this release must work with the newer schema)"
        )
    return False, f"database at revision {current or 'none (no schema)'}, this image needs {head}"


def wait_for_head(
    engine: Engine,
    timeout: float,
    interval: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Look until the schema is ready (see `schema_state`), for at most `timeout` seconds
    (0: look once); an unreachable database counts as not ready yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ready, state = schema_state(engine)
        except DatabaseUnavailableError as exc:
            ready, state = False, str(exc)
        if ready:
            return state
        if time.monotonic() >= deadline:
            raise SchemaNotReadyError(
                f"{state} (waited {timeout:g} s): run the migrations first "
                "(python -m shared.db.migrate; docs/deploy.md, Deploying)"
            )
        sleep(max(0.0, min(interval, deadline - time.monotonic())))


def check_database(timeout: float) -> None:
    """Start up from the environment and wait (bounded) for the schema to be at head."""
    from shared.settings import Settings
    from shared.startup import started

    with started(Settings, "migrate-wait") as up:
        print(wait_for_head(up.engine, timeout))


def migrate_database(revision: str = "head") -> None:
    """Start up from the environment, migrate to `revision` and say where the database is."""
    from shared.settings import Settings
    from shared.startup import started

    with started(Settings, "migrate") as up:
        upgrade(up.engine, revision)
        print(f"database at revision {current_revision(up.engine)}")


def main(argv: Sequence[str] | None = None) -> int:
    """The production migration entry point (the Kubernetes Job runs it; the services' init
    containers run it with `--wait`)."""
    from shared.startup import exit_code

    parser = argparse.ArgumentParser(prog="python -m shared.db.migrate")
    parser.add_argument("--revision", default="head", help="target revision (default: head)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--wait",
        action="store_true",
        help="change nothing; wait until the database is at this image's head revision",
    )
    mode.add_argument(
        "--check", action="store_true", help="change nothing; exit 2 unless at head now"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="--wait gives up after this many seconds"
    )
    args = parser.parse_args(argv)

    def migrate() -> int:
        if args.wait or args.check:
            check_database(args.timeout if args.wait else 0.0)
        else:
            migrate_database(args.revision)
        return 0

    return exit_code("migrate", migrate)


if __name__ == "__main__":
    sys.exit(main())
