"""xact_id: the writing transaction of every open_slots and drop_events row

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

A commit-ordered cursor for the feed's pages (and the event stream): `opened_at` is taken
before a poll commits, so a poll that commits after a page was read could slip rows in front
of that page's cursor. Each row now records the transaction that wrote it
(`pg_current_xact_id()`), and a reader sees only rows of transactions below the oldest one
still in flight when its first page was read (docs/architecture.md, "Commit order").

No table rewrite: the column is added without a default (a catalog change; old rows read as
NULL, which means "before every cursor"), then the default is set for new rows only. The
poller's statements do not change: they list their columns, so the default fills xact_id.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TABLES = ("open_slots", "drop_events")


def upgrade() -> None:
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} ADD COLUMN xact_id xid8")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN xact_id SET DEFAULT pg_current_xact_id()")


def downgrade() -> None:
    for table in _TABLES:
        op.drop_column(table, "xact_id")
