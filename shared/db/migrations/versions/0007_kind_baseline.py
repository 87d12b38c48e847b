"""per-request-kind baseline

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

A bucket's baseline was taken from its first healthy non-empty polls as a whole. When one party
size was blocked all that time, its slots were missing from the baseline and became false drops
when the block lifted. Each request kind (party size) now has its own baseline count in
`kind_baseline` (party size -> healthy non-empty answers, up to 3); until a kind has its three,
what only it reports is baseline, not a drop. See docs/architecture.md, The poller.

A bucket baselined before this (or seeded as baselined: `baseline_polls` 3, `kind_baseline`
empty) counts every kind as baselined.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "discovery_buckets",
        sa.Column(
            "kind_baseline",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_column("discovery_buckets", "kind_baseline")
