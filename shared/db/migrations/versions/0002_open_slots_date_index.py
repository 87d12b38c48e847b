"""open_slots index for date-filtered feed queries

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

JustOpened with a reservation-date filter walked the wrong index at 1M events (a hash
anti-join over the whole window, ~20 ms); with this index the planner reads just the newest
drops of the requested dates (measured 2.8 ms -> 0.8 ms execution).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_open_slots_date_opened",
        "open_slots",
        ["slot_date", sa.literal_column("opened_at DESC")],
        unique=False,
        postgresql_where=sa.text("drop_event_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_open_slots_date_opened", table_name="open_slots")
