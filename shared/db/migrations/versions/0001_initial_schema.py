"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28

The whole schema of docs/architecture.md. drop_events is created partitioned by
bucket_date; its daily partitions are created at run time (shared.db.partitions).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "discovery_buckets",
        sa.Column("bucket_id", sa.String(length=16), nullable=False),
        sa.Column("market", sa.String(length=32), nullable=False),
        sa.Column("date_str", sa.String(length=10), nullable=False),
        sa.Column("bucket_date", sa.Date(), nullable=False),
        sa.Column("time_slot", sa.String(length=5), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "next_poll_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("snapshot_version", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("baseline_polls", sa.SmallInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_healthy_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_outcome", sa.String(length=32), nullable=True),
        sa.Column("last_slot_count", sa.Integer(), nullable=True),
        sa.Column("suspect_polls", sa.SmallInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("bucket_id", name=op.f("pk_discovery_buckets")),
    )
    op.create_index(
        op.f("ix_discovery_buckets_date_str"), "discovery_buckets", ["date_str"], unique=False
    )
    op.create_index("ix_discovery_buckets_due", "discovery_buckets", ["next_poll_at"], unique=False)
    op.create_table(
        "drop_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("bucket_date", sa.Date(), nullable=False),
        sa.Column("bucket_id", sa.String(length=16), nullable=False),
        sa.Column("market", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("slot_id", sa.String(length=32), nullable=False),
        sa.Column("venue_id", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.String(length=10), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("drop_duration_seconds", sa.Double(), nullable=True),
        sa.Column("slot_date", sa.Date(), nullable=False),
        sa.Column("slot_time", sa.Time(), nullable=False),
        sa.Column("seating_type", sa.Text(), nullable=False),
        sa.Column("party_sizes", postgresql.ARRAY(sa.SmallInteger()), nullable=False),
        sa.Column("time_slot", sa.String(length=5), nullable=False),
        sa.Column("time_bucket", sa.String(length=8), nullable=False),
        sa.Column("dedupe_key", sa.String(length=160), nullable=False),
        sa.Column("drop_event_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "event_type IN ('NEW_DROP', 'CLOSED')", name=op.f("ck_drop_events_event_type")
        ),
        sa.CheckConstraint(
            "time_bucket IN ('prime', 'off_peak')", name=op.f("ck_drop_events_time_bucket")
        ),
        sa.PrimaryKeyConstraint("id", "bucket_date", name=op.f("pk_drop_events")),
        sa.UniqueConstraint("bucket_date", "dedupe_key", name="uq_drop_events_dedupe_key"),
        postgresql_partition_by="RANGE (bucket_date)",
    )
    op.create_index(op.f("ix_drop_events_bucket_id"), "drop_events", ["bucket_id"], unique=False)
    op.create_index(
        "ix_drop_events_bucket_id_event_type_opened_at",
        "drop_events",
        ["bucket_id", "event_type", sa.literal_column("opened_at DESC")],
        unique=False,
    )
    op.create_index(op.f("ix_drop_events_event_type"), "drop_events", ["event_type"], unique=False)
    op.create_index(
        "ix_drop_events_event_type_opened_at",
        "drop_events",
        ["event_type", sa.literal_column("opened_at DESC")],
        unique=False,
    )
    op.create_index(op.f("ix_drop_events_opened_at"), "drop_events", ["opened_at"], unique=False)
    op.create_index(op.f("ix_drop_events_slot_id"), "drop_events", ["slot_id"], unique=False)
    op.create_table(
        "market_metrics",
        sa.Column("market", sa.String(length=32), nullable=False),
        sa.Column("window_date", sa.Date(), nullable=False),
        sa.Column("total_drops", sa.Integer(), nullable=False),
        sa.Column("total_closes", sa.Integer(), nullable=False),
        sa.Column("venues_with_drops", sa.Integer(), nullable=False),
        sa.Column("avg_drop_duration_seconds", sa.Double(), nullable=True),
        sa.Column("median_drop_duration_seconds", sa.Double(), nullable=True),
        sa.Column("weekday", sa.SmallInteger(), nullable=False),
        sa.Column("drops_by_hour", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("market", "window_date", name=op.f("pk_market_metrics")),
    )
    op.create_table(
        "venue_metrics",
        sa.Column("venue_id", sa.BigInteger(), nullable=False),
        sa.Column("window_date", sa.Date(), nullable=False),
        sa.Column("new_drop_count", sa.Integer(), nullable=False),
        sa.Column("closed_count", sa.Integer(), nullable=False),
        sa.Column("prime_drop_count", sa.Integer(), nullable=False),
        sa.Column("off_peak_drop_count", sa.Integer(), nullable=False),
        sa.Column("avg_drop_duration_seconds", sa.Double(), nullable=True),
        sa.Column("median_drop_duration_seconds", sa.Double(), nullable=True),
        sa.Column("scarcity_score", sa.Double(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("venue_id", "window_date", name=op.f("pk_venue_metrics")),
    )
    op.create_index("ix_venue_metrics_window_date", "venue_metrics", ["window_date"], unique=False)
    op.create_table(
        "venue_rolling_metrics",
        sa.Column("venue_id", sa.BigInteger(), nullable=False),
        sa.Column("as_of_date", sa.Date(), nullable=False),
        sa.Column("total_drops", sa.Integer(), nullable=False),
        sa.Column("days_with_drops", sa.Integer(), nullable=False),
        sa.Column("drops_per_day", sa.Double(), nullable=False),
        sa.Column("rarity_score", sa.Double(), nullable=False),
        sa.Column("last7_drops", sa.Integer(), nullable=False),
        sa.Column("prev7_drops", sa.Integer(), nullable=False),
        sa.Column("trend", sa.Double(), nullable=True),
        sa.Column("availability_rate", sa.Double(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("venue_id", "as_of_date", name=op.f("pk_venue_rolling_metrics")),
    )
    op.create_index(
        "ix_venue_rolling_metrics_as_of_date", "venue_rolling_metrics", ["as_of_date"], unique=False
    )
    op.create_table(
        "venues",
        sa.Column("venue_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column(
            "provider", sa.String(length=16), server_default=sa.text("'resy'"), nullable=False
        ),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("neighborhood", sa.Text(), nullable=True),
        sa.Column("price_range", sa.SmallInteger(), nullable=True),
        sa.Column("url_slug", sa.Text(), nullable=True),
        sa.Column("location_code", sa.Text(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("venue_id", name=op.f("pk_venues")),
    )
    op.create_table(
        "baseline_slots",
        sa.Column("bucket_id", sa.String(length=16), nullable=False),
        sa.Column("slot_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["bucket_id"],
            ["discovery_buckets.bucket_id"],
            name=op.f("fk_baseline_slots_bucket_id_discovery_buckets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("bucket_id", "slot_id", name=op.f("pk_baseline_slots")),
    )
    op.create_table(
        "open_slots",
        sa.Column("bucket_id", sa.String(length=16), nullable=False),
        sa.Column("slot_id", sa.String(length=32), nullable=False),
        sa.Column("venue_id", sa.BigInteger(), nullable=False),
        sa.Column("slot_date", sa.Date(), nullable=False),
        sa.Column("slot_time", sa.Time(), nullable=False),
        sa.Column("seating_type", sa.Text(), nullable=False),
        sa.Column("party_sizes", postgresql.ARRAY(sa.SmallInteger()), nullable=False),
        sa.Column("time_slot", sa.String(length=5), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("drop_event_id", sa.BigInteger(), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["bucket_id"],
            ["discovery_buckets.bucket_id"],
            name=op.f("fk_open_slots_bucket_id_discovery_buckets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("bucket_id", "slot_id", name=op.f("pk_open_slots")),
    )
    op.create_index(
        "ix_open_slots_opened_at",
        "open_slots",
        [sa.literal_column("opened_at DESC")],
        unique=False,
        postgresql_where=sa.text("drop_event_id IS NOT NULL"),
    )
    op.create_index(
        "ix_open_slots_venue_date_opened",
        "open_slots",
        ["venue_id", "slot_date", sa.literal_column("opened_at DESC")],
        unique=False,
        postgresql_where=sa.text("drop_event_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_open_slots_venue_date_opened",
        table_name="open_slots",
        postgresql_where=sa.text("drop_event_id IS NOT NULL"),
    )
    op.drop_index(
        "ix_open_slots_opened_at",
        table_name="open_slots",
        postgresql_where=sa.text("drop_event_id IS NOT NULL"),
    )
    op.drop_table("open_slots")
    op.drop_table("baseline_slots")
    op.drop_table("venues")
    op.drop_index("ix_venue_rolling_metrics_as_of_date", table_name="venue_rolling_metrics")
    op.drop_table("venue_rolling_metrics")
    op.drop_index("ix_venue_metrics_window_date", table_name="venue_metrics")
    op.drop_table("venue_metrics")
    op.drop_table("market_metrics")
    op.drop_index(op.f("ix_drop_events_slot_id"), table_name="drop_events")
    op.drop_index(op.f("ix_drop_events_opened_at"), table_name="drop_events")
    op.drop_index("ix_drop_events_event_type_opened_at", table_name="drop_events")
    op.drop_index(op.f("ix_drop_events_event_type"), table_name="drop_events")
    op.drop_index("ix_drop_events_bucket_id_event_type_opened_at", table_name="drop_events")
    op.drop_index(op.f("ix_drop_events_bucket_id"), table_name="drop_events")
    op.drop_table("drop_events")
    op.drop_index("ix_discovery_buckets_due", table_name="discovery_buckets")
    op.drop_index(op.f("ix_discovery_buckets_date_str"), table_name="discovery_buckets")
    op.drop_table("discovery_buckets")
