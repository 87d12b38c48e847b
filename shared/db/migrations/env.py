"""Alembic environment: runs migrations on the connection `shared.db.migrate` hands over.

The URL never passes through alembic's config file (which would interpolate and could log it).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from shared.db.migrations_support import include_name
from shared.db.models import Base

target_metadata = Base.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("run migrations through `dropwatch migrate` (shared.db.migrate)")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=include_name,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
