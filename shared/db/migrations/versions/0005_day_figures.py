"""day_figures: which days' figures are final

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

A maintenance run dated in the past recreated the partitions of days already dropped, and the
next run replaced those days' figures with the zeros of the empty partitions. `day_figures`
records, per reservation day, how many events its stored figures count and when they became
final (its partition dropped): a final day never gets a partition again, and no figures are
replaced by figures of fewer events (docs/architecture.md, Maintenance).

Existing figures are recorded from `venue_metrics` (their event counts); a day without a
partition any more is final.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "day_figures",
        sa.Column("window_date", sa.Date(), nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.Column(
            "aggregated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("final_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("window_date", name=op.f("pk_day_figures")),
    )
    op.execute(
        """
        INSERT INTO day_figures (window_date, event_count, aggregated_at, final_at)
        SELECT d.window_date, coalesce(v.events, 0), d.at,
            CASE WHEN to_regclass('drop_events_p' || to_char(d.window_date, 'YYYYMMDD'))
                      IS NULL THEN d.at END
        FROM (
            SELECT window_date, max(updated_at) AS at FROM (
                SELECT window_date, updated_at FROM market_metrics
                UNION ALL SELECT window_date, updated_at FROM venue_metrics
            ) u GROUP BY window_date
        ) d
        LEFT JOIN (
            SELECT window_date, sum(new_drop_count + closed_count) AS events
            FROM venue_metrics GROUP BY window_date
        ) v USING (window_date)
        """
    )


def downgrade() -> None:
    op.drop_table("day_figures")
