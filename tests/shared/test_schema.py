"""The schema: migrations agree with the models, round-trip, partitions, dedupe key."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from shared.db import migrate, partitions
from shared.db.engine import make_engine
from shared.db.migrations_support import include_name
from shared.db.models import Base
from shared.settings import Settings
from tests.conftest import PgServer


def test_server_is_postgresql_15_or_newer(pg_server: PgServer) -> None:
    assert pg_server.server_version_num() >= 150000


def test_models_and_migrations_agree(engine: Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_name": include_name}
        )
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_upgrade_downgrade_upgrade_on_empty_database(empty_db_url: str) -> None:
    engine = make_engine(Settings(), name="roundtrip", url=empty_db_url)
    try:
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        tables = set(inspect(engine).get_table_names())
        assert {"drop_events", "discovery_buckets", "venue_metrics"} <= tables
        migrate.downgrade(engine, "base")
        assert migrate.current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_drop_events_keeps_only_the_indexes_its_writes_need(engine: Engine) -> None:
    """Every event maintains each index; no query reads drop_events by anything else (0003)."""
    with engine.connect() as conn:
        names = set(
            conn.execute(
                text("SELECT indexname FROM pg_indexes WHERE tablename = 'drop_events'")
            ).scalars()
        )
    # + the change cursor's commit-order read (0011)
    assert names == {"pk_drop_events", "uq_drop_events_dedupe_key", "ix_drop_events_xact_id_id"}


def test_downgrade_to_0002_restores_the_review_indexes(empty_db_url: str) -> None:
    engine = make_engine(Settings(), name="roundtrip", url=empty_db_url)
    try:
        migrate.upgrade(engine)
        migrate.downgrade(engine, "0002")
        with engine.connect() as conn:
            rows = dict(
                conn.execute(
                    text(
                        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'drop_events'"
                    )
                ).all()
            )
        assert (
            "(bucket_id, event_type, opened_at DESC)"
            in rows["ix_drop_events_bucket_id_event_type_opened_at"]
        )
        assert "(event_type, opened_at DESC)" in rows["ix_drop_events_event_type_opened_at"]
        assert len(rows) == 8
    finally:
        engine.dispose()


def test_drop_events_is_partitioned_by_bucket_date(engine: Engine) -> None:
    with engine.connect() as conn:
        strategy = conn.execute(
            text("SELECT pg_get_partkeydef('drop_events'::regclass)")
        ).scalar_one()
    assert strategy == "RANGE (bucket_date)"


def _insert_event(conn: object, day: dt.date, dedupe_key: str) -> int:
    from sqlalchemy import Connection

    assert isinstance(conn, Connection)
    return conn.execute(
        text(
            """
            INSERT INTO drop_events (bucket_date, bucket_id, market, provider, slot_id,
                venue_id, event_type, opened_at, slot_date, slot_time, seating_type,
                party_sizes, time_slot, time_bucket, dedupe_key)
            VALUES (:d, :b, 'nyc', 'resy', 'slot1', 1, 'NEW_DROP', now(), :d, '19:30',
                'Dining Room', '{2,4}', '19:00', 'prime', :k)
            ON CONFLICT (bucket_date, dedupe_key) DO NOTHING
            """
        ),
        {"d": day, "b": f"{day.isoformat()}_19:00", "k": dedupe_key},
    ).rowcount


def test_partitions_are_created_idempotently_and_dropped_whole(engine: Engine) -> None:
    days = [dt.date(2026, 12, 30), dt.date(2026, 12, 31), dt.date(2027, 1, 1)]
    with engine.begin() as conn:
        created = partitions.ensure_partitions(conn, days)
        assert created == [partitions.partition_name(d) for d in days]
        assert partitions.ensure_partitions(conn, days) == []
        assert partitions.list_partitions(conn) == days
        for day in days:
            assert _insert_event(conn, day, f"k-{day}") == 1
    with engine.begin() as conn:
        dropped = partitions.drop_partitions_before(conn, dt.date(2027, 1, 1))
        assert dropped == days[:2]
        remaining = conn.execute(text("SELECT bucket_date FROM drop_events")).scalars().all()
        assert remaining == [dt.date(2027, 1, 1)]


def test_dedupe_key_is_unique(engine: Engine) -> None:
    day = dt.date(2026, 12, 3)
    with engine.begin() as conn:
        partitions.ensure_partitions(conn, [day])
        assert _insert_event(conn, day, "same") == 1
        assert _insert_event(conn, day, "same") == 0
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO drop_events (bucket_date, bucket_id, market, provider, slot_id,"
                " venue_id, event_type, opened_at, slot_date, slot_time, seating_type,"
                " party_sizes, time_slot, time_bucket, dedupe_key) SELECT bucket_date,"
                " bucket_id, market, provider, slot_id, venue_id, event_type, opened_at,"
                " slot_date, slot_time, seating_type, party_sizes, time_slot, time_bucket,"
                " dedupe_key FROM drop_events"
            )
        )


def test_event_without_partition_fails_loudly(engine: Engine) -> None:
    with pytest.raises(IntegrityError), engine.begin() as conn:
        _insert_event(conn, dt.date(2031, 5, 5), "no-partition")
