"""The one PostgreSQL schema of dropwatch, as typed SQLAlchemy 2.0 models.

Names follow the original system's schema as the review describes it (the vocabulary operators
already query by; see docs/architecture.md, Review findings). Alembic
migrations in `shared/db/migrations` create and change this schema; a test proves both agree.

Design in short (the why is in docs/architecture.md):
- `drop_events` is range-partitioned by `bucket_date` (one partition per reservation day), so
  retention drops whole partitions instead of deleting rows.
- `open_slots` is the current state (the snapshot) of every live bucket, kept by the poller in
  the same transaction as its events: still-open is an index scan and CLOSED needs no lookup.
- `baseline_slots` lists the open slots a bucket took as baseline (open when first seen): no
  drops while they stay open; a row leaves with its slot, so a reopening is a drop.
- Leases and due-ness live on `discovery_buckets`, so poller replicas share work safely.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    Time,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

EVENT_NEW_DROP = "NEW_DROP"
EVENT_CLOSED = "CLOSED"

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TZ = DateTime(timezone=True)


class XID8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (`xid8`): which transaction wrote a row."""

    cache_ok = True

    def get_col_spec(self, **_kw: object) -> str:
        return "xid8"


ischema_names["xid8"] = XID8  # so reflection (the models/migrations comparison) knows it


# The writing transaction of a row (commit order; see docs/architecture.md, "Commit order").
# NULL for rows written before migration 0004: older than every cursor.
def _xact_id() -> Mapped[int | None]:
    return mapped_column(XID8(), server_default=text("pg_current_xact_id()"))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class DiscoveryBucket(Base):
    """One unit of polling: a reservation date and an anchor time, plus its poll state."""

    __tablename__ = "discovery_buckets"

    bucket_id: Mapped[str] = mapped_column(String(16), primary_key=True)  # YYYY-MM-DD_HH:MM
    market: Mapped[str] = mapped_column(String(32))
    date_str: Mapped[str] = mapped_column(String(10), index=True)  # YYYY-MM-DD
    bucket_date: Mapped[dt.date] = mapped_column(Date)
    time_slot: Mapped[str] = mapped_column(String(5))  # anchor HH:MM
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=func.now())
    # Scheduling and leases (shared by every poller replica).
    next_poll_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=func.now())
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    # Snapshot bookkeeping: the version increases with every committed healthy poll.
    snapshot_version: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    baseline_polls: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    last_polled_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    last_healthy_poll_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    last_outcome: Mapped[str | None] = mapped_column(String(32))
    last_slot_count: Mapped[int | None] = mapped_column(Integer)
    suspect_polls: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    # Request kinds (party sizes) held as blocked or suspect: {"4": {"since", "polls", "why"}}.
    held: Mapped[dict[str, object]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # Healthy non-empty answers per request kind, up to 3: a kind's own baseline ({"4": 2}).
    kind_baseline: Mapped[dict[str, int]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))

    __table_args__ = (Index("ix_discovery_buckets_due", "next_poll_at"),)


class Venue(Base):
    """A restaurant as the provider describes it; upserted by the poller."""

    __tablename__ = "venues"

    venue_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    provider: Mapped[str] = mapped_column(String(16), server_default=text("'resy'"))
    name: Mapped[str] = mapped_column(Text)
    neighborhood: Mapped[str | None] = mapped_column(Text)
    price_range: Mapped[int | None] = mapped_column(SmallInteger)
    url_slug: Mapped[str | None] = mapped_column(Text)
    location_code: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=func.now())


class BaselineSlot(Base):
    """An open slot its bucket took as baseline: no drop until it closes (the row goes with it)."""

    __tablename__ = "baseline_slots"

    bucket_id: Mapped[str] = mapped_column(
        String(16), ForeignKey("discovery_buckets.bucket_id", ondelete="CASCADE")
    )
    slot_id: Mapped[str] = mapped_column(String(32))

    __table_args__ = (PrimaryKeyConstraint("bucket_id", "slot_id"),)


class OpenSlot(Base):
    """A slot open at the bucket's last healthy poll (the snapshot), with its drop if any."""

    __tablename__ = "open_slots"

    bucket_id: Mapped[str] = mapped_column(
        String(16), ForeignKey("discovery_buckets.bucket_id", ondelete="CASCADE")
    )
    slot_id: Mapped[str] = mapped_column(String(32))
    venue_id: Mapped[int] = mapped_column(BigInteger)
    slot_date: Mapped[dt.date] = mapped_column(Date)
    slot_time: Mapped[dt.time] = mapped_column(Time)
    seating_type: Mapped[str] = mapped_column(Text)
    party_sizes: Mapped[list[int]] = mapped_column(ARRAY(SmallInteger))
    # When each of `party_sizes` (same order) became bookable; NULL = since the slot opened.
    size_opened_at: Mapped[list[dt.datetime] | None] = mapped_column(ARRAY(TZ))
    time_slot: Mapped[str] = mapped_column(String(5))
    first_seen_at: Mapped[dt.datetime] = mapped_column(TZ)
    # Set when the slot opened as a NEW_DROP; NULL for baseline and pre-existing slots.
    drop_event_id: Mapped[int | None] = mapped_column(BigInteger)
    opened_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    xact_id: Mapped[int | None] = _xact_id()

    __table_args__ = (
        PrimaryKeyConstraint("bucket_id", "slot_id"),
        # Feed: newest drops first, and "is there a newer drop for this venue and date?".
        Index(
            "ix_open_slots_opened_at",
            text("opened_at DESC"),
            postgresql_where=text("drop_event_id IS NOT NULL"),
        ),
        Index(
            "ix_open_slots_venue_date_opened",
            "venue_id",
            "slot_date",
            text("opened_at DESC"),
            postgresql_where=text("drop_event_id IS NOT NULL"),
        ),
        # Feed with a reservation-date filter: newest drops of those dates.
        Index(
            "ix_open_slots_date_opened",
            "slot_date",
            text("opened_at DESC"),
            postgresql_where=text("drop_event_id IS NOT NULL"),
        ),
    )


class DropEvent(Base):
    """A NEW_DROP (a slot opened) or CLOSED (a dropped slot went away) event.

    Partitioned by `bucket_date`; the primary key and the dedupe key therefore include it
    (PostgreSQL requires the partition key in every unique index). `dedupe_key` itself embeds
    the bucket id, so it is unique on its own.
    """

    __tablename__ = "drop_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False))
    bucket_date: Mapped[dt.date] = mapped_column(Date)
    bucket_id: Mapped[str] = mapped_column(String(16))
    market: Mapped[str] = mapped_column(String(32))
    provider: Mapped[str] = mapped_column(String(16))
    slot_id: Mapped[str] = mapped_column(String(32))
    venue_id: Mapped[int] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(10))
    opened_at: Mapped[dt.datetime] = mapped_column(TZ)
    closed_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    drop_duration_seconds: Mapped[float | None] = mapped_column(Double)
    slot_date: Mapped[dt.date] = mapped_column(Date)
    slot_time: Mapped[dt.time] = mapped_column(Time)
    seating_type: Mapped[str] = mapped_column(Text)
    party_sizes: Mapped[list[int]] = mapped_column(ARRAY(SmallInteger))
    time_slot: Mapped[str] = mapped_column(String(5))
    time_bucket: Mapped[str] = mapped_column(String(8))  # prime | off_peak
    dedupe_key: Mapped[str] = mapped_column(String(160))
    # For CLOSED: the NEW_DROP event it closes.
    drop_event_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=func.now())
    xact_id: Mapped[int | None] = _xact_id()

    __table_args__ = (
        PrimaryKeyConstraint("id", "bucket_date"),
        UniqueConstraint("bucket_date", "dedupe_key", name="uq_drop_events_dedupe_key"),
        CheckConstraint(
            "event_type IN ('NEW_DROP', 'CLOSED', 'SIZE_OPEN', 'SIZE_CLOSE')", name="event_type"
        ),
        CheckConstraint("time_bucket IN ('prime', 'off_peak')", name="time_bucket"),
        # Otherwise open_slots serves the feed and the poller, and retention drops partitions;
        # the change cursor reads in commit order (migration 0011). See docs/architecture.md.
        Index("ix_drop_events_xact_id_id", "xact_id", "id"),
        {"postgresql_partition_by": "RANGE (bucket_date)"},
    )


class VenueMetrics(Base):
    """Daily figures per venue; `window_date` is the reservation date of the slots."""

    __tablename__ = "venue_metrics"

    venue_id: Mapped[int] = mapped_column(BigInteger)
    window_date: Mapped[dt.date] = mapped_column(Date)
    new_drop_count: Mapped[int] = mapped_column(Integer)
    closed_count: Mapped[int] = mapped_column(Integer)
    prime_drop_count: Mapped[int] = mapped_column(Integer)
    off_peak_drop_count: Mapped[int] = mapped_column(Integer)
    avg_drop_duration_seconds: Mapped[float | None] = mapped_column(Double)
    median_drop_duration_seconds: Mapped[float | None] = mapped_column(Double)
    scarcity_score: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=func.now())

    __table_args__ = (
        PrimaryKeyConstraint("venue_id", "window_date"),
        Index("ix_venue_metrics_window_date", "window_date"),
    )


class MarketMetrics(Base):
    """Daily figures per market."""

    __tablename__ = "market_metrics"

    market: Mapped[str] = mapped_column(String(32))
    window_date: Mapped[dt.date] = mapped_column(Date)
    total_drops: Mapped[int] = mapped_column(Integer)
    total_closes: Mapped[int] = mapped_column(Integer)
    venues_with_drops: Mapped[int] = mapped_column(Integer)
    avg_drop_duration_seconds: Mapped[float | None] = mapped_column(Double)
    median_drop_duration_seconds: Mapped[float | None] = mapped_column(Double)
    weekday: Mapped[int] = mapped_column(SmallInteger)  # ISO: 1 = Monday
    drops_by_hour: Mapped[dict[str, int]] = mapped_column(JSONB)
    updated_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=func.now())

    __table_args__ = (PrimaryKeyConstraint("market", "window_date"),)


class DayFigures(Base):
    """Per reservation day with figures: how many events they count, and since when they are
    final (the day's partition dropped; it is never created again). See docs/architecture.md,
    Maintenance."""

    __tablename__ = "day_figures"

    window_date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    event_count: Mapped[int] = mapped_column(BigInteger)
    aggregated_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=func.now())
    final_at: Mapped[dt.datetime | None] = mapped_column(TZ)


class MaintenanceRun(Base):
    """One maintenance run and its JSON summary, so the job's health (the last success) is
    read from the database, not from the Pushgateway's memory; an `installed` row (migration
    0009) marks when recording began. See docs/deploy.md, Monitoring."""

    __tablename__ = "maintenance_runs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(TZ)
    finished_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=func.now())
    outcome: Mapped[str] = mapped_column(String(16))
    summary: Mapped[dict[str, object]] = mapped_column(JSONB)

    __table_args__ = (
        CheckConstraint(
            "outcome IN ('succeeded', 'skipped', 'failed', 'installed')", name="outcome"
        ),
        Index("ix_maintenance_runs_outcome_finished_at", "outcome", "finished_at"),
    )


class VenueRollingMetrics(Base):
    """Per venue, the 14 days up to `as_of_date`."""

    __tablename__ = "venue_rolling_metrics"

    venue_id: Mapped[int] = mapped_column(BigInteger)
    as_of_date: Mapped[dt.date] = mapped_column(Date)
    total_drops: Mapped[int] = mapped_column(Integer)
    days_with_drops: Mapped[int] = mapped_column(Integer)
    drops_per_day: Mapped[float] = mapped_column(Double)
    rarity_score: Mapped[float] = mapped_column(Double)
    last7_drops: Mapped[int] = mapped_column(Integer)
    prev7_drops: Mapped[int] = mapped_column(Integer)
    trend: Mapped[float | None] = mapped_column(Double)
    availability_rate: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=func.now())

    __table_args__ = (
        PrimaryKeyConstraint("venue_id", "as_of_date"),
        Index("ix_venue_rolling_metrics_as_of_date", "as_of_date"),
    )


class RequestBudgetRow(Base):
    """The provider's request budget of one market, as a token bucket every poller replica
    claims small grants from (services/poller/budget.py); `last_grant` returns a claim's
    grant, `granted_total` counts every token ever granted."""

    __tablename__ = "request_budget"

    market: Mapped[str] = mapped_column(String(32), primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    refilled_at: Mapped[dt.datetime] = mapped_column(TZ)
    last_grant: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    granted_total: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class ReleaseWindow(Base):
    """A learned release: the venue opens a burst of tables `lead_days` ahead at a market-local
    minute, seen on `days_seen` days; replaced per market by the maintenance job."""

    __tablename__ = "release_windows"

    market: Mapped[str] = mapped_column(String(32))
    venue_id: Mapped[int] = mapped_column(BigInteger)
    lead_days: Mapped[int] = mapped_column(SmallInteger)
    release_minute: Mapped[int] = mapped_column(SmallInteger)  # market-local minute of day
    time_slots: Mapped[list[str]] = mapped_column(ARRAY(String(5)))  # anchors of its buckets
    days_seen: Mapped[int] = mapped_column(Integer)
    first_seen: Mapped[dt.date] = mapped_column(Date)
    last_seen: Mapped[dt.date] = mapped_column(Date)
    slots_per_release: Mapped[float] = mapped_column(Double)
    refreshed_at: Mapped[dt.datetime] = mapped_column(TZ, server_default=func.now())

    __table_args__ = (
        PrimaryKeyConstraint("market", "venue_id", "lead_days", "release_minute"),
        CheckConstraint("release_minute BETWEEN 0 AND 1439 AND lead_days >= 0", name="moment"),
    )


class ChangeFloor(Base):
    """The highest xact_id removed by retention (one row, migration 0011): a change cursor at
    or below it may have lost events, so it is OUT_OF_RANGE (docs/architecture.md, "Change
    cursor and ListChanges")."""

    __tablename__ = "change_floor"

    singleton: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    pruned_through: Mapped[int] = mapped_column(XID8())
    pruned_day: Mapped[dt.date] = mapped_column(Date)
    pruned_at: Mapped[dt.datetime] = mapped_column(TZ)

    __table_args__ = (CheckConstraint("singleton", name="singleton"),)
