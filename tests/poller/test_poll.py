"""Polls end to end: real simulator over HTTP, real PostgreSQL, the real poll code."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import Engine, text

from services.poller import store
from services.poller.app import build_context
from services.poller.poll import PollContext
from tests.poller.conftest import scheduler_for
from tests.poller.helpers import TODAY, bucket_row, events, make_due, open_slot_ids, poller_settings
from tests.waiting import wait_until_async
from tools.simulator.server import ScriptedSlot, ScriptedVenue, Simulator

BUCKET = f"{TODAY.isoformat()}_19:00"


def script(sim: Simulator, *slots: str, day: dt.date = TODAY) -> None:
    """Make `day` show exactly these slots: "venue@HH:MM" (Dining Room, sizes 2 and 4)."""
    venues: dict[int, list[ScriptedSlot]] = {}
    for spec in slots:
        venue, hhmm = spec.split("@")
        venues.setdefault(int(venue), []).append(ScriptedSlot(time=hhmm))
    sim.script_day(day, [ScriptedVenue(v, f"Venue {v}", s) for v, s in venues.items()])


async def poll(ctx: PollContext, engine: Engine) -> store.WriteResult | str:
    make_due(engine, BUCKET)
    outcomes = await scheduler_for(ctx).poll_once(BUCKET)
    assert len(outcomes) == 1
    return outcomes[0].outcome


def kinds(engine: Engine) -> list[tuple[str, str]]:
    return [(e["event_type"], e["slot_time"].strftime("%H:%M")) for e in events(engine, BUCKET)]


async def baseline(ctx: PollContext, engine: Engine, sim: Simulator, *slots: str) -> None:
    script(sim, *slots)
    for _ in range(3):
        assert await poll(ctx, engine) == "healthy"
    assert events(engine, BUCKET) == []
    assert bucket_row(engine, BUCKET)["baseline_polls"] == 3


async def test_baseline_then_drop_close_reopen(
    ctx: PollContext, engine: Engine, sim: Simulator
) -> None:
    await baseline(ctx, engine, sim, "1@19:00", "2@19:30")
    script(sim, "1@19:00", "2@19:30", "3@20:00")
    await poll(ctx, engine)
    assert kinds(engine) == [("NEW_DROP", "20:00")]
    script(sim, "1@19:00", "2@19:30")
    await poll(ctx, engine)
    assert kinds(engine) == [("NEW_DROP", "20:00"), ("CLOSED", "20:00")]
    closed = events(engine, BUCKET)[1]
    assert closed["drop_duration_seconds"] is not None and closed["drop_duration_seconds"] >= 0
    script(sim, "1@19:00", "2@19:30", "3@20:00")
    await poll(ctx, engine)
    assert kinds(engine)[-1] == ("NEW_DROP", "20:00")
    drops = [e for e in events(engine, BUCKET) if e["event_type"] == "NEW_DROP"]
    assert len({d["dedupe_key"] for d in drops}) == 2


async def test_a_baseline_slot_is_no_drop_until_it_reopens(
    ctx: PollContext, engine: Engine, sim: Simulator
) -> None:
    await baseline(ctx, engine, sim, "1@19:00", "2@19:30")
    script(sim, "1@19:00")  # a baseline slot goes away: it never opened as a drop, no CLOSED
    await poll(ctx, engine)
    assert events(engine, BUCKET) == []
    script(sim, "1@19:00", "2@19:30")  # ... and comes back: a cancellation, a drop
    await poll(ctx, engine)
    assert kinds(engine) == [("NEW_DROP", "19:30")]


async def test_flapping_slot_pairs_every_drop_with_its_close(
    ctx: PollContext, engine: Engine, sim: Simulator
) -> None:
    await baseline(ctx, engine, sim, "1@19:00")
    for _ in range(3):
        script(sim, "1@19:00", "5@18:15")
        await poll(ctx, engine)
        script(sim, "1@19:00")
        await poll(ctx, engine)
    rows = events(engine, BUCKET)
    assert [r["event_type"] for r in rows] == ["NEW_DROP", "CLOSED"] * 3
    for drop, close in zip(rows[::2], rows[1::2], strict=True):
        assert close["drop_event_id"] == drop["id"]


async def test_same_answer_in_other_time_formats_writes_nothing(
    ctx: PollContext, engine: Engine, sim: Simulator
) -> None:
    await baseline(ctx, engine, sim, "1@19:00", "2@19:30", "3@20:45")
    snapshot = open_slot_ids(engine, BUCKET)
    for _ in range(4):  # the simulator varies date.start formats and token templates
        await poll(ctx, engine)
    assert events(engine, BUCKET) == []
    assert open_slot_ids(engine, BUCKET) == snapshot


async def test_baseline_is_not_taken_from_empty_polls(
    ctx: PollContext, engine: Engine, sim: Simulator
) -> None:
    script(sim)  # nothing open
    for _ in range(3):
        await poll(ctx, engine)
    assert bucket_row(engine, BUCKET)["baseline_polls"] == 0
    script(sim, "1@19:00", "2@19:30")
    await poll(ctx, engine)
    assert events(engine, BUCKET) == []  # first non-empty poll baselines, no false drops
    assert bucket_row(engine, BUCKET)["baseline_polls"] == 1


def _slots(n: int) -> list[str]:
    return [f"{100 + i}@{17 + (i % 5)}:{15 * (i % 4):02d}" for i in range(n)]


FAULTS = [
    ("auth", {}, "auth"),
    ("challenge", {}, "blocked"),
    ("rate_limit", {"count": 10, "retry_after": 0}, "rate_limited"),
    ("server_error", {"count": 10}, "server_error"),
    ("malformed", {}, "malformed"),
    ("drifted", {}, "malformed"),
    ("missing_page", {}, "incomplete"),
    ("latency", {"count": 10, "delay_s": 3}, "timeout"),
]


@pytest.mark.parametrize(("kind", "options", "reason"), FAULTS)
async def test_every_fault_emits_nothing_and_keeps_the_snapshot(
    ctx: PollContext,
    engine: Engine,
    sim: Simulator,
    kind: str,
    options: dict[str, float],
    reason: str,
) -> None:
    many = _slots(150)  # more than one page of 100 venues
    await baseline(ctx, engine, sim, *many)
    before = (open_slot_ids(engine, BUCKET), bucket_row(engine, BUCKET)["snapshot_version"])
    # If a fault were taken as truth, slots would "close": shrink the answer where the fault
    # does not need a second page, so a healthy-looking misread would show as CLOSED events.
    if kind != "missing_page":
        script(sim, *many[:10])
    sim.faults.add(kind, **options)  # type: ignore[arg-type]
    if kind == "latency":
        object.__setattr__(
            ctx, "settings", ctx.settings.model_copy(update={"poll_deadline_seconds": 1.0})
        )
    assert await poll(ctx, engine) == reason
    assert events(engine, BUCKET) == []
    assert (open_slot_ids(engine, BUCKET), bucket_row(engine, BUCKET)["snapshot_version"]) == before
    assert bucket_row(engine, BUCKET)["last_outcome"] == reason


async def test_empty_answer_is_a_block_and_a_collapse_is_held_once(
    ctx: PollContext, engine: Engine, sim: Simulator
) -> None:
    many = _slots(30)
    await baseline(ctx, engine, sim, *many)
    script(sim, *many, "9@18:00")
    await poll(ctx, engine)  # one real drop, so a confirmed shrink has something to close
    sim.faults.add("empty", count=4)  # both party sizes come back empty, twice
    assert await poll(ctx, engine) == "blocked"
    assert await poll(ctx, engine) == "blocked"  # a second empty answer confirms nothing
    assert [e["event_type"] for e in events(engine, BUCKET)] == ["NEW_DROP"]
    # Back to normal: nothing closed, nothing reopened.
    assert await poll(ctx, engine) == "healthy"
    assert [e["event_type"] for e in events(engine, BUCKET)] == ["NEW_DROP"]
    # A real collapse (non-empty), seen twice, is accepted.
    script(sim, *many[:3])
    assert await poll(ctx, engine) == "suspect_soft_block"
    assert await poll(ctx, engine) == "confirmed_shrink"
    assert [e["event_type"] for e in events(engine, BUCKET)] == ["NEW_DROP", "CLOSED"]


async def test_one_party_size_blocked_over_http_closes_nothing(
    ctx: PollContext, engine: Engine, sim: Simulator
) -> None:
    many = _slots(30)
    await baseline(ctx, engine, sim, *many)
    await poll(ctx, engine)  # size 4 gets its own baseline too (the fourth answer)
    before = open_slot_ids(engine, BUCKET)
    sim.faults.set_default("empty", match={"party_size": 4})
    for _ in range(3):
        assert await poll(ctx, engine) == "partial_block"
    assert events(engine, BUCKET) == [] and open_slot_ids(engine, BUCKET) == before
    sim.faults.set_default(None)
    assert await poll(ctx, engine) == "healthy"
    assert events(engine, BUCKET) == []


async def test_rate_limit_is_retried_after_retry_after(
    ctx: PollContext, engine: Engine, sim: Simulator
) -> None:
    script(sim, "1@19:00")
    sim.faults.add("rate_limit", count=1, retry_after=0.2)
    assert await poll(ctx, engine) == "healthy"
    assert bucket_row(engine, BUCKET)["baseline_polls"] == 1


class Crash(Exception):
    pass


async def test_crash_before_commit_loses_nothing_and_duplicates_nothing(
    ctx: PollContext, engine: Engine, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    await baseline(ctx, engine, sim, "1@19:00")
    script(sim, "1@19:00", "2@20:00")
    real = store.write_healthy_poll

    async def crash_after_write(*args: object, **kwargs: object) -> store.WriteResult:
        await real(*args, **kwargs)  # type: ignore[arg-type]
        raise Crash("process died before COMMIT")

    monkeypatch.setattr(store, "write_healthy_poll", crash_after_write)
    with pytest.raises(Crash):
        await poll(ctx, engine)
    assert events(engine, BUCKET) == []
    monkeypatch.setattr(store, "write_healthy_poll", real)
    # The dead poll's lease blocks others until it expires; expire it, as time would.
    with engine.begin() as conn:
        conn.execute(text("UPDATE discovery_buckets SET lease_expires_at = now() - interval '1s'"))
    await poll(ctx, engine)
    assert kinds(engine) == [("NEW_DROP", "20:00")]


async def test_crash_after_commit_then_rerun_writes_nothing(
    ctx: PollContext, engine: Engine, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    await baseline(ctx, engine, sim, "1@19:00")
    script(sim, "1@19:00", "2@20:00")

    def crash(*_args: object) -> None:
        raise Crash("process died right after COMMIT")

    monkeypatch.setattr(ctx.metrics.last_healthy_poll, "labels", crash)
    with pytest.raises(Crash):
        await poll(ctx, engine)
    monkeypatch.undo()
    assert kinds(engine) == [("NEW_DROP", "20:00")]
    await poll(ctx, engine)  # same upstream answer again
    assert kinds(engine) == [("NEW_DROP", "20:00")]


@pytest.mark.parametrize("replicas", [2, 3])
async def test_racing_pollers_poll_each_bucket_once(
    db_url: str, engine: Engine, sim: Simulator, replicas: int
) -> None:
    contexts = [
        build_context(poller_settings(db_url, sim.base_url), db_url) for _ in range(replicas)
    ]
    try:
        await asyncio.gather(*(scheduler_for(c).poll_once() for c in contexts))
        # Everything is now within its cooldown: a second round polls nothing.
        again = await asyncio.gather(*(scheduler_for(c).poll_once() for c in contexts))
    finally:
        for c in contexts:
            await c.provider.aclose()
            await c.engine.dispose()
    assert all(outcomes == [] for outcomes in again)
    with engine.connect() as conn:
        versions = (
            conn.execute(
                text("SELECT snapshot_version FROM discovery_buckets WHERE bucket_date >= :d"),
                {"d": TODAY},
            )
            .scalars()
            .all()
        )
    assert versions and all(v == 1 for v in versions)  # each live bucket written exactly once


async def test_a_dead_replicas_lease_expires_and_is_taken_over(
    ctx: PollContext, engine: Engine, sim: Simulator
) -> None:
    scheduler = scheduler_for(ctx)
    await scheduler.ensure_buckets(force=True)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE discovery_buckets SET lease_owner = 'dead-replica', "
                "lease_expires_at = now() + interval '1 hour'"
            )
        )
    assert await scheduler.poll_once() == []
    with engine.begin() as conn:  # the dead replica's lease runs out: no wall-clock wait
        conn.execute(
            text("UPDATE discovery_buckets SET lease_expires_at = now() - interval '1 ms'")
        )
    taken = await scheduler.poll_once()
    assert {o.bucket_id for o in taken} >= {BUCKET}


async def test_health_goes_not_serving_when_the_database_is_unreachable(sim: Simulator) -> None:
    url = "postgresql://poller:pw@127.0.0.1:1/nowhere"
    context = build_context(poller_settings(url, sim.base_url, tick_seconds=0.05), url)
    reports: list[bool] = []

    async def on_health(ok: bool) -> None:
        reports.append(ok)

    stop = asyncio.Event()
    scheduler = scheduler_for(context)
    scheduler._on_health = on_health
    task = asyncio.create_task(scheduler.run(stop))

    async def reported() -> bool:
        return len(reports) >= 2  # not a single lucky tick

    await wait_until_async(reported, "two health reports from a scheduler without a database")
    stop.set()
    await task
    await context.provider.aclose()
    await context.engine.dispose()
    assert reports and not any(reports)


async def test_a_failing_poll_does_not_stop_the_loop(
    ctx: PollContext, engine: Engine, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("services.poller.scheduler.poll_bucket", broken)
    scheduler = scheduler_for(ctx)
    await scheduler.ensure_buckets(force=True)
    leased = await scheduler.lease_due(1)
    outcome = await scheduler._guarded(leased[0])
    assert outcome.outcome == "error" and not outcome.applied
