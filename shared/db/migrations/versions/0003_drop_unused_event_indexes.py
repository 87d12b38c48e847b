"""drop the drop_events indexes no query reads

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

The review's six drop_events indexes served the original's reads: still-open and just-opened
from drop_events, the CLOSED lookup by slot, the prune by bucket_id. Here those reads go to
open_slots (feed, poller) and retention drops whole partitions, so no query reads these
indexes (docs/architecture.md), while every event written maintains them: the poller's insert
and `dropwatch seed` paid for eight indexes where two are used (the primary key and the dedupe
key). Measured in docs/architecture.md. The benchmarks recreate them for the original patterns.
("The review" and "the original": docs/architecture.md, Review findings, P2.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_PLAIN = ("bucket_id", "slot_id", "event_type", "opened_at")


def upgrade() -> None:
    for column in _PLAIN:
        op.drop_index(f"ix_drop_events_{column}", table_name="drop_events")
    op.drop_index("ix_drop_events_event_type_opened_at", table_name="drop_events")
    op.drop_index("ix_drop_events_bucket_id_event_type_opened_at", table_name="drop_events")


def downgrade() -> None:
    for column in _PLAIN:
        op.create_index(f"ix_drop_events_{column}", "drop_events", [column], unique=False)
    op.create_index(
        "ix_drop_events_event_type_opened_at",
        "drop_events",
        ["event_type", sa.literal_column("opened_at DESC")],
        unique=False,
    )
    op.create_index(
        "ix_drop_events_bucket_id_event_type_opened_at",
        "drop_events",
        ["bucket_id", "event_type", sa.literal_column("opened_at DESC")],
        unique=False,
    )
