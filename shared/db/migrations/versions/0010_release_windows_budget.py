"""release_windows and request_budget: learned release moments, one request budget per market

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

`release_windows` holds what the maintenance job learned from the retained NEW_DROP events:
per venue, the lead days and market-local minute at which it releases a burst of tables, so
every poller replica polls the matching buckets densely around that moment and the knowledge
survives a restart. `request_budget` is one token bucket per market: poller replicas claim
small grants from it, so the provider sees at most the configured rate whatever the number
of replicas (docs/architecture.md, Release windows and the shared budget).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_budget",
        sa.Column("market", sa.String(length=32), nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("refilled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_grant", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("granted_total", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("market", name=op.f("pk_request_budget")),
    )
    op.create_table(
        "release_windows",
        sa.Column("market", sa.String(length=32), nullable=False),
        sa.Column("venue_id", sa.BigInteger(), nullable=False),
        sa.Column("lead_days", sa.SmallInteger(), nullable=False),
        sa.Column("release_minute", sa.SmallInteger(), nullable=False),
        sa.Column("time_slots", postgresql.ARRAY(sa.String(length=5)), nullable=False),
        sa.Column("days_seen", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.Date(), nullable=False),
        sa.Column("last_seen", sa.Date(), nullable=False),
        sa.Column("slots_per_release", sa.Double(), nullable=False),
        sa.Column(
            "refreshed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "release_minute BETWEEN 0 AND 1439 AND lead_days >= 0",
            name=op.f("ck_release_windows_moment"),
        ),
        sa.PrimaryKeyConstraint(
            "market", "venue_id", "lead_days", "release_minute", name=op.f("pk_release_windows")
        ),
    )


def downgrade() -> None:
    op.drop_table("release_windows")
    op.drop_table("request_budget")
