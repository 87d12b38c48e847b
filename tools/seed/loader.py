"""Load a seed plan fast: each day is built as a standalone table, then attached.

Per reservation day, in one transaction: create the day's table and INSERT its events
(day.py; its open drops go from there to open_state's stage), build the parent's indexes on it
in bulk (parent.py), ANALYZE it, then ATTACH it as the day's partition.
A matching CHECK spares ATTACH its validation scan and the prebuilt indexes are adopted, so
the ATTACH, the only step that locks the parent, is catalog-only: a loader waits at most for
another's ATTACH and commit, never for its load. Building an index once over a full table is
several times cheaper than maintaining it row by row; for the same reason the staged open
state moves to open_slots in one bulk step (open_state.py) as soon as the days with open
state are loaded, while the other days still load.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

from shared.db.partitions import list_partitions, partition_name
from shared.errors import DropwatchError
from tools.seed import day as day_rows
from tools.seed import open_state, parent, sql
from tools.seed.plan import NEIGHBORHOODS, PROVIDER, SeedPlan

LOADERS = 2  # one per core of a small machine; days are independent
# Statistics for the columns queries filter or group drop_events by; the unique text columns
# (slot_id, dedupe_key) would make ANALYZE several times slower and are only ever compared by
# equality.
ANALYZED = "bucket_id, event_type, venue_id"


@dataclass(frozen=True)
class SeedResult:
    events: int
    open_drops: int
    baseline: int
    days: int
    seconds: float
    id_base: int  # event ids are id_base + 1 ...; a later `load` of more days reuses it

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def load(
    engine: Engine,
    plan: SeedPlan,
    *,
    days: Iterable[dt.date] | None = None,
    id_base: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SeedResult:
    """Load the plan's `days` (default: all). They must hold no events yet."""
    wanted = sorted(set(plan.days if days is None else days))
    chosen = [b for b in plan.buckets if b.day in wanted]
    with_state = sorted({b.day for b in chosen if b.open_drops or b.baseline})
    started = time.perf_counter()
    _move_open_state(engine, leftover=True)  # what an interrupted seed staged, first
    with engine.begin() as conn:
        _clear_days(conn, wanted)
        add_venues_and_buckets(conn, plan, wanted)
        indexes = parent.indexes(conn)
        if id_base is None:
            id_base = int(
                conn.execute(text("SELECT coalesce(max(id), 0) FROM drop_events")).scalar_one()
            )
        _reserve_ids(conn, id_base + 2 * max(b.n0 + b.pairs for b in plan.buckets))
        if with_state:
            open_state.stage(conn)
    base: int = id_base
    finished: list[dt.date] = []
    lock = threading.Lock()

    def load_one(day: dt.date) -> None:
        _load_day(engine, plan, day, base, indexes)
        with lock:
            finished.append(day)
            if progress is not None:
                progress(len(finished), len(wanted))

    def move_after(loading: list[Future[None]]) -> None:
        wait(loading)  # those days are running or done by now: the pool took them first
        _move_open_state(engine)

    # Days with open state go first: their state then moves while the others still load.
    failed: tuple[dt.date, BaseException] | None = None
    with ThreadPoolExecutor(max_workers=LOADERS) as pool:
        futures = {day: pool.submit(load_one, day) for day in with_state}
        moving = pool.submit(move_after, list(futures.values())) if with_state else None
        futures |= {day: pool.submit(load_one, day) for day in wanted if day not in futures}
        for day, future in futures.items():
            if future.exception() is not None:
                pool.shutdown(cancel_futures=True)  # the days not started yet are not loaded
                failed = (day, future.exception() or RuntimeError())
                break
    moved: DropwatchError | None = None
    try:
        if moving is not None and moving.cancelled():  # the loaded days' state moves anyway
            _move_open_state(engine)
        elif moving is not None:
            moving.result()
    except DropwatchError as error:
        moved = error
    if failed is not None:
        day, cause = failed
        also = f"; {moved}" if moved is not None else ""
        raise DropwatchError(
            f"seed: loading {day} failed ({_cause(cause)}); the days loaded before stay, "
            f"so seed an empty database to start over{also}"
        ) from cause
    if moved is not None:
        raise moved
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("ANALYZE baseline_slots, discovery_buckets, venues"))
    return SeedResult(
        events=sum(b.events for b in chosen),
        open_drops=sum(b.open_drops for b in chosen),
        baseline=sum(b.baseline for b in chosen),
        days=len(wanted),
        seconds=time.perf_counter() - started,
        id_base=base,
    )


def _move_open_state(engine: Engine, *, leftover: bool = False) -> None:
    try:
        with engine.begin() as conn:
            open_state.move(conn, leftover=leftover)
    except Exception as exc:
        raise DropwatchError(
            f"seed: moving the open state into {open_state.TARGET} failed ({_cause(exc)}); "
            f"its rows stay in {open_state.STAGE}: the next seed tries again, "
            f"DROP TABLE {open_state.STAGE} discards them"
        ) from exc


def _cause(exc: BaseException) -> str:
    """The first line of the database's own message, without SQLAlchemy's wrapping."""
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def _load_day(
    engine: Engine, plan: SeedPlan, day: dt.date, id_base: int, indexes: list[parent.Index]
) -> None:
    name = partition_name(day)
    with engine.begin() as conn:
        # A day of a large load can take longer than the services' statement timeout.
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        day_rows.create(conn, plan, day, id_base, name, open_state.STAGE)
        for index in indexes:
            conn.execute(text(index.ddl(name)))
        # A 6,000-row sample (the default is 30,000): n_distinct of venue_id still comes out
        # within a few percent, at a quarter of the cost.
        conn.execute(text("SET LOCAL default_statistics_target = 20"))
        conn.execute(text(f"ANALYZE {name} ({ANALYZED})"))
        parent.attach(conn, day)


def add_venues_and_buckets(conn: Connection, plan: SeedPlan, days: list[dt.date]) -> None:
    """The plan's venues and the days' buckets (each day's load marks them polled)."""
    conn.execute(
        text(sql.VENUES),
        {"provider": PROVIDER, "hoods": list(NEIGHBORHOODS), "venues": plan.venues},
    )
    chosen = [b for b in plan.buckets if b.day in days]
    conn.execute(
        text(sql.BUCKETS),
        {
            "market": plan.market,
            "ids": [b.bucket_id for b in chosen],
            "days": [b.day for b in chosen],
            "anchors": [b.anchor for b in chosen],
        },
    )


def _reserve_ids(conn: Connection, top: int) -> None:
    """Move the id sequence past every id the plan uses, before loading: the poller's next
    event never reuses a seeded id, even if the load stops half-way."""
    seq = conn.execute(text("SELECT pg_get_serial_sequence('drop_events', 'id')")).scalar_one()
    conn.execute(
        text(f"SELECT setval(:seq, greatest(:top, (SELECT last_value FROM {seq})))"),
        {"seq": seq, "top": max(top, 1)},
    )


def _clear_days(conn: Connection, days: list[dt.date]) -> None:
    """Refuse days that hold events; drop the empty partitions made ahead of the others (each
    day is attached fully built)."""
    existing = set(list_partitions(conn))
    for day in days:
        if day not in existing:
            continue
        name = partition_name(day)
        if conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {name})")).scalar_one():
            raise DropwatchError(f"seed: {day} already has events; seed an empty database")
        conn.execute(text(f"DROP TABLE {name}"))
