"""per-request-kind block state, per-size opening times, party-size events

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

A blocked request kind (one party size answering empty) must change nothing it reported, and a
block that lasts must close nothing until a sell-out is confirmed; the bucket keeps that state
in `held` (party size -> since, polls, why). A slot that becomes bookable for a new party size
is, for that size, a table that just opened: `open_slots.size_opened_at` (parallel to
`party_sizes`) says when each size opened, and SIZE_OPEN / SIZE_CLOSE events record the change.
See docs/architecture.md, The poller.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_OLD_TYPES = "event_type IN ('NEW_DROP', 'CLOSED')"
_NEW_TYPES = "event_type IN ('NEW_DROP', 'CLOSED', 'SIZE_OPEN', 'SIZE_CLOSE')"


def upgrade() -> None:
    op.add_column(
        "discovery_buckets",
        sa.Column(
            "held",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )
    op.add_column(
        "open_slots",
        sa.Column("size_opened_at", postgresql.ARRAY(sa.DateTime(timezone=True)), nullable=True),
    )
    op.drop_constraint(op.f("ck_drop_events_event_type"), "drop_events", type_="check")
    op.create_check_constraint("event_type", "drop_events", _NEW_TYPES)


def downgrade() -> None:
    op.execute("DELETE FROM drop_events WHERE event_type IN ('SIZE_OPEN', 'SIZE_CLOSE')")
    op.drop_constraint(op.f("ck_drop_events_event_type"), "drop_events", type_="check")
    op.create_check_constraint("event_type", "drop_events", _OLD_TYPES)
    op.drop_column("open_slots", "size_opened_at")
    op.drop_column("discovery_buckets", "held")
