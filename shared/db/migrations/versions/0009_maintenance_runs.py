"""maintenance_runs: each maintenance run, when, outcome and figures

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

The last run's health lived only in the Pushgateway's memory: a restarted Pushgateway hid a
failed daily run for up to 46 hours. Each run now records itself (its JSON summary), and the
poller exports the last success from here (docs/deploy.md, Monitoring). An `installed` row
marks when recording began: until a first success, the alert counts from it (an upgrade or a
fresh install gets the same 26 hours as a daily run, not an alert at once).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maintenance_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "finished_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("summary", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('succeeded', 'skipped', 'failed', 'installed')",
            name=op.f("ck_maintenance_runs_outcome"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maintenance_runs")),
    )
    op.create_index(
        "ix_maintenance_runs_outcome_finished_at",
        "maintenance_runs",
        ["outcome", "finished_at"],
    )
    op.execute(
        """
        INSERT INTO maintenance_runs (started_at, outcome, summary)
        VALUES (now(), 'installed',
            '{"message": "runs are recorded from here on (migration 0009)"}'::jsonb)
        """
    )


def downgrade() -> None:
    op.drop_table("maintenance_runs")
