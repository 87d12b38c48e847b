"""`dropwatch seed`: realistic history in exactly the shapes the poller writes."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading

import pytest
from pydantic import SecretStr
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from services.maintenance.run import run as maintenance_run
from services.maintenance.settings import MaintenanceSettings
from shared.errors import DropwatchError
from shared.settings import Settings
from tests.conftest import REPO_ROOT
from tests.waiting import wait_until
from tools.seed import Shape, load, make_plan, open_state, seed
from tools.seed.plan import open_slot_index, slot_for

NOW = dt.datetime(2026, 12, 10, 17, 0, tzinfo=dt.UTC)


def test_seeded_history_is_consistent(engine: Engine, db_url: str) -> None:
    settings = Settings(database_url=SecretStr(db_url))
    result = seed(engine, settings, events=28_000, past_days=14, venues=300, now=NOW)
    assert result.days == 28 and abs(result.events - 28_000) < 28 * 2 * 2  # whole pairs
    with engine.connect() as conn:
        q = lambda sql: conn.execute(text(sql)).scalar_one()  # noqa: E731
        assert q("SELECT count(*) FROM drop_events") == result.events
        # Every CLOSED closes an existing NEW_DROP of the same slot, with its duration.
        assert (
            q(
                "SELECT count(*) FROM drop_events c LEFT JOIN drop_events d"
                " ON d.id = c.drop_event_id AND d.event_type = 'NEW_DROP' AND d.slot_id = c.slot_id"
                " WHERE c.event_type = 'CLOSED' AND (d.id IS NULL"
                " OR c.closed_at - c.opened_at <> c.drop_duration_seconds * interval '1 second'"
                " OR c.opened_at <> d.opened_at OR c.closed_at < c.opened_at)"
            )
            == 0
        )
        assert q(f"SELECT count(*) FROM drop_events WHERE opened_at > '{NOW.isoformat()}'") == 0
        # Open drops are exactly the live NEW_DROPs without a CLOSED. (NOT IN a hashed subplan:
        # PostgreSQL 15 misestimates the three-column join below and would nest-loop NOT EXISTS.)
        closed = "SELECT drop_event_id FROM drop_events WHERE drop_event_id IS NOT NULL"
        assert (
            q(
                "SELECT count(*) FROM open_slots o JOIN drop_events d ON d.id = o.drop_event_id"
                " AND d.slot_id = o.slot_id AND d.bucket_id = o.bucket_id"
                f" WHERE d.id NOT IN ({closed})"
            )
            == result.open_drops
            == q(
                "SELECT count(*) FROM drop_events d WHERE d.event_type = 'NEW_DROP'"
                f" AND d.id NOT IN ({closed})"
            )
            > 0
        )
        assert q("SELECT count(*) FROM open_slots WHERE drop_event_id IS NULL") == result.baseline
        assert q("SELECT count(*) FROM baseline_slots") == result.baseline > 0
        assert (
            q(
                "SELECT count(*) FROM open_slots o JOIN discovery_buckets b USING (bucket_id)"
                " WHERE b.bucket_date < '2026-12-10'"
            )
            == 0
        )
        assert q("SELECT count(*) FROM discovery_buckets WHERE bucket_date >= '2026-12-10'") == 28
        assert q("SELECT count(DISTINCT venue_id) FROM drop_events") > 250
        recent = q(
            "SELECT count(*) FROM open_slots WHERE opened_at > "
            f"'{(NOW - dt.timedelta(minutes=5)).isoformat()}'"
        )
        assert recent > 0  # something for JustOpened
        # The partitions' indexes were built before ATTACH and adopted by the parent's.
        assert (
            q(
                "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE c.relkind = 'i' AND c.relname LIKE 'pk_drop_events_p%'"
            )
            == 28
        )
        # Seeded slot ids are the poller's: a poll of the same slots would diff to nothing.
        bucket, slot_id, venue, day, start = conn.execute(
            text(
                "SELECT bucket_id, slot_id, venue_id, slot_date, slot_time FROM open_slots"
                " WHERE drop_event_id IS NOT NULL ORDER BY bucket_id, slot_id LIMIT 1"
            )
        ).one()
    plan = make_plan(settings, 28_000, now=NOW, past_days=14, venues=300)
    b = plan.bucket(bucket)
    opens = {
        slot_for(300, b.day, b.anchor, open_slot_index(b, plan.space, i)).slot_id: i
        for i in range(b.open_drops)
    }
    slot = slot_for(300, b.day, b.anchor, open_slot_index(b, plan.space, opens[slot_id]))
    assert (slot.venue_id, slot.start) == (venue, dt.datetime.combine(day, start))
    with pytest.raises(DropwatchError, match="already has events"):
        seed(engine, settings, events=1000, now=NOW)


def test_more_days_load_later_with_the_same_ids(engine: Engine, db_url: str) -> None:
    """A plan loaded in two goes (as the maintenance benchmark refills days) gives the same
    events as one load: ids come from global pair numbers."""
    settings = Settings(database_url=SecretStr(db_url))
    plan = make_plan(settings, 6_000, now=NOW, past_days=2, venues=100)
    first = load(engine, plan, days=plan.days[1:])
    second = load(engine, plan, days=plan.days[:1], id_base=first.id_base)
    with engine.connect() as conn:
        count, ids = conn.execute(
            text("SELECT count(*), count(DISTINCT id) FROM drop_events")
        ).one()
        top = conn.execute(text("SELECT max(id) FROM drop_events")).scalar_one()
        nextval = conn.execute(
            text("SELECT nextval(pg_get_serial_sequence('drop_events', 'id'))")
        ).scalar_one()
    assert count == ids == first.events + second.events == plan.events
    assert nextval > top  # the poller's next event gets a fresh id


def test_maintenance_runs_on_seeded_history(engine: Engine, db_url: str) -> None:
    # The run's clock is the seed's NOW (maintenance refuses a `--now` ahead of the database
    # clock, so the test replaces that clock rather than dating the run ahead).
    settings = Settings(database_url=SecretStr(db_url))
    result = seed(engine, settings, events=10_000, past_days=3, venues=100, now=NOW)
    summary = maintenance_run(
        MaintenanceSettings(database_url=SecretStr(db_url)), engine, None, clock=lambda: NOW
    )
    assert summary.steps["prune_events"].detail["partitions"] == 3
    with engine.connect() as conn:
        aggregated = conn.execute(
            text("SELECT sum(new_drop_count + closed_count) FROM venue_metrics")
        ).scalar_one()
    assert aggregated == summary.steps["prune_events"].rows < result.events


@pytest.mark.slow
def test_seed_cli(db_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    env["DROPWATCH_DATABASE_URL"] = db_url

    def seed_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", "seed", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    result = seed_cli("--events", "5000", "--days", "2", "--venues", "50")
    assert result.returncode == 0, result.stderr
    assert "seeded" in result.stdout and "events/s" in result.stdout
    again = seed_cli("--events", "5000")
    assert again.returncode == 2 and "already has events" in again.stderr
    assert "Traceback" not in again.stderr
    bad = seed_cli("--events", "10", "--open-ratio", "1.5")
    assert bad.returncode == 2 and "--open-ratio: 1.5 is not between 0 and 1" in bad.stderr


def test_history_only_has_no_open_state(engine: Engine, db_url: str) -> None:
    settings = Settings(database_url=SecretStr(db_url))
    result = seed(
        engine,
        settings,
        events=5_000,
        past_days=2,
        venues=50,
        now=NOW,
        shape=Shape(open_ratio=0, recent=0),
    )
    with engine.connect() as conn:
        open_rows = conn.execute(text("SELECT count(*) FROM open_slots")).scalar_one()
        new, closed = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE event_type = 'NEW_DROP'),"
                " count(*) FILTER (WHERE event_type = 'CLOSED') FROM drop_events"
            )
        ).one()
    assert (result.open_drops, result.baseline, open_rows) == (0, 0, 0)
    assert new == closed == result.events // 2 > 0


def test_a_failed_day_stops_the_load_with_the_ids_reserved(engine: Engine, db_url: str) -> None:
    settings = Settings(database_url=SecretStr(db_url))
    plan = make_plan(settings, 6_000, now=NOW, past_days=3, venues=100)
    blocked = plan.days[-1]
    with engine.begin() as conn:  # a stray table where the day's table is to be built
        conn.execute(text(f"CREATE TABLE drop_events_p{blocked:%Y%m%d} (x int)"))
    with pytest.raises(DropwatchError, match=f"loading {blocked} failed .*already exists"):
        load(engine, plan)
    with engine.connect() as conn:
        top = conn.execute(text("SELECT coalesce(max(id), 0) FROM drop_events")).scalar_one()
        nextval = conn.execute(
            text("SELECT nextval(pg_get_serial_sequence('drop_events', 'id'))")
        ).scalar_one()
        # The live days loaded before the failure have their open state, and no stage is left.
        assert not open_state.staged(conn)
        open_rows = conn.execute(
            text(
                "SELECT count(*) FROM open_slots o JOIN discovery_buckets b USING (bucket_id)"
                " WHERE b.bucket_date < :blocked"
            ),
            {"blocked": blocked},
        ).scalar_one()
        stray = conn.execute(
            text(
                "SELECT count(*) FROM open_slots o JOIN discovery_buckets b USING (bucket_id)"
                " WHERE b.bucket_date = :blocked"
            ),
            {"blocked": blocked},
        ).scalar_one()
    assert nextval > 2 * max(b.n0 + b.pairs for b in plan.buckets) >= top
    loaded = [b for b in plan.buckets if plan.today <= b.day < blocked]
    assert open_rows == sum(b.open_drops + b.baseline for b in loaded) > 0
    assert stray == 0
    with engine.connect() as conn:  # the failed day's buckets were never marked polled
        polls = dict(
            conn.execute(
                text(
                    "SELECT bucket_date = :blocked, max(baseline_polls) FROM discovery_buckets"
                    " GROUP BY 1"
                ),
                {"blocked": blocked},
            ).all()
        )
    assert polls == {True: 0, False: 3}


def _open_slots_catalog(conn: Connection) -> list[tuple[str, str]]:
    """open_slots' constraints and indexes, as definitions."""
    rows = conn.execute(
        text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'open_slots'::regclass"
            " UNION ALL SELECT c.relname, pg_get_indexdef(c.oid) FROM pg_index x"
            " JOIN pg_class c ON c.oid = x.indexrelid WHERE x.indrelid = 'open_slots'::regclass"
            " ORDER BY 1, 2"
        )
    )
    return [(name, definition) for name, definition in rows]


def test_open_state_moves_in_bulk_and_keeps_every_index(engine: Engine, db_url: str) -> None:
    """The move drops and rebuilds open_slots' keys and indexes: they come back the same, and
    they hold (a duplicate slot or an unknown bucket fails the move, which rolls back)."""
    settings = Settings(database_url=SecretStr(db_url))
    with engine.connect() as conn:
        before = _open_slots_catalog(conn)
    result = seed(engine, settings, events=8_000, past_days=1, venues=100, now=NOW)
    with engine.begin() as conn:
        assert _open_slots_catalog(conn) == before and len(before) >= 6
        assert conn.execute(text("SELECT count(*) FROM open_slots")).scalar_one() == (
            result.open_drops + result.baseline
        )
        assert conn.execute(
            text("SELECT reltuples FROM pg_class WHERE relname = 'open_slots'")
        ).scalar_one() == (result.open_drops + result.baseline)  # analyzed
        open_state.stage(conn)
        conn.execute(text(f"INSERT INTO {open_state.STAGE} SELECT * FROM open_slots LIMIT 1"))
    with engine.begin() as conn, pytest.raises(IntegrityError, match="pk_open_slots"):
        open_state.move(conn)
    with engine.begin() as conn:
        assert open_state.staged(conn) and _open_slots_catalog(conn) == before
        conn.execute(text(f"UPDATE {open_state.STAGE} SET bucket_id = 'nowhere', slot_id = 'x'"))
    with engine.begin() as conn, pytest.raises(IntegrityError, match="fk_open_slots"):
        open_state.move(conn)
    # Left by an interrupted seed, rows of a vanished bucket are stale: the next seed drops
    # them before anything else (and then refuses the days that hold events).
    with pytest.raises(DropwatchError, match="already has events"):
        seed(engine, settings, events=1000, now=NOW)
    with engine.connect() as conn:
        assert not open_state.staged(conn) and _open_slots_catalog(conn) == before
        assert conn.execute(text("SELECT count(*) FROM open_slots")).scalar_one() == (
            result.open_drops + result.baseline
        )


def test_a_stage_that_cannot_move_is_one_clear_error(engine: Engine, db_url: str) -> None:
    settings = Settings(database_url=SecretStr(db_url))
    seed(engine, settings, events=4_000, past_days=0, venues=100, now=NOW)
    with engine.begin() as conn:  # the same slot staged twice, absent from open_slots
        open_state.stage(conn)
        conn.execute(
            text(
                "WITH one AS (DELETE FROM open_slots"
                " WHERE ctid = (SELECT min(ctid) FROM open_slots) RETURNING *)"
                f" INSERT INTO {open_state.STAGE}"
                " SELECT one.* FROM one CROSS JOIN generate_series(1, 2)"
            )
        )
    with pytest.raises(DropwatchError, match=r"pk_open_slots.*DROP TABLE seed_open_slots"):
        seed(engine, settings, events=1000, now=NOW)


def test_the_move_takes_its_locks_in_the_pollers_order(engine: Engine, db_url: str) -> None:
    """A poll locks its bucket row, then writes open_slots. The move must not hold open_slots
    while it waits for discovery_buckets (that deadlocked): it waits, then runs."""
    settings = Settings(database_url=SecretStr(db_url))
    seed(engine, settings, events=4_000, past_days=0, venues=100, now=NOW)
    with engine.begin() as conn:
        bucket = conn.execute(text("SELECT min(bucket_id) FROM open_slots")).scalar_one()
        open_state.stage(conn)
    poll = engine.connect()
    tx = poll.begin()
    poll.execute(
        text("SELECT 1 FROM discovery_buckets WHERE bucket_id = :b FOR UPDATE"), {"b": bucket}
    )
    poll_pid = poll.execute(text("SELECT pg_backend_pid()")).scalar_one()
    errors: list[BaseException] = []

    def move() -> None:
        try:
            with engine.begin() as conn:
                open_state.move(conn)
        except BaseException as exc:
            errors.append(exc)

    mover = threading.Thread(target=move)
    mover.start()

    def move_waits_for_the_poll() -> bool:
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE :p = ANY(pg_blocking_pids(pid))"
                    ),
                    {"p": poll_pid},
                ).scalar_one()
            )

    wait_until(move_waits_for_the_poll, "the move to wait for the poll's bucket lock")
    poll.execute(text("DELETE FROM open_slots WHERE bucket_id = :b"), {"b": bucket})
    tx.commit()
    poll.close()
    mover.join(timeout=30)
    assert not mover.is_alive() and errors == []
    with engine.connect() as conn:
        assert not open_state.staged(conn)


def test_an_interrupted_seed_moves_its_staged_state_first(engine: Engine, db_url: str) -> None:
    """A seed killed between its days and the move leaves the stage behind; the next seed (of
    other days) moves it before anything else."""
    settings = Settings(database_url=SecretStr(db_url))
    plan = make_plan(settings, 6_000, now=NOW, past_days=1, venues=100)
    live = [day for day in plan.days if day >= plan.today]
    first = load(engine, plan, days=live[:2])
    with engine.begin() as conn:  # as if that seed had died before its move
        open_state.stage(conn)
        conn.execute(text(f"INSERT INTO {open_state.STAGE} SELECT * FROM open_slots"))
        conn.execute(text("DELETE FROM open_slots"))
    load(engine, plan, days=live[2:3], id_base=first.id_base)
    with engine.connect() as conn:
        assert not open_state.staged(conn)
        rows = conn.execute(text("SELECT count(*) FROM open_slots")).scalar_one()
    chosen = [b for b in plan.buckets if b.day in live[:3]]
    assert rows == sum(b.open_drops + b.baseline for b in chosen) > 0


def test_many_past_days_keep_the_event_count() -> None:
    """Few pairs per bucket: fewer drops stay open rather than more events than asked."""
    plan = make_plan(Settings(), 100_000, now=NOW, past_days=30)
    assert abs(plan.events - 100_000) < 1_000
    assert all(b.pairs >= b.open_drops for b in plan.buckets)
