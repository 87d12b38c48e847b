"""Seed and simulate one world: a seeded `make run` keeps its open drops until the
simulator's model closes them (tools/simulator/world.py, tools/stack/seeded.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import Engine, text

from services.poller.app import poll_once
from services.poller.settings import PollerSettings
from shared.db.buckets import bucket_id_for, market_today
from shared.settings import Settings
from tests.tools.simulating import DAY, NOW, FakeClock, all_slot_ids, http
from tools.seed import seed
from tools.simulator.model import TimeWindow
from tools.simulator.server import Simulator
from tools.simulator.world import World
from tools.stack.seeded import export_world

SEEDED = "venue_id <= 50"  # `seed --venues 50` makes venues 1..50; the model's start at 1000


def _world() -> World:
    venues = [{"venue_id": 5, "name": "Venue 5", "neighborhood": "SoHo", "price_range": 2}]
    slots = [[5, DAY.isoformat(), f"{h}:{m:02d}", "Bar", [2, 4]] for h in (18, 19) for m in (0, 30)]
    return World.from_rows(7, venues, slots)


def test_carried_slots_stay_open_until_the_model_closes_them() -> None:
    clock = FakeClock()
    with (
        Simulator(venues=300, seed=7, clock=clock, world=_world()) as sim,
        http(sim.base_url, timeout=5) as client,
    ):
        carried = {s for s in all_slot_ids(client, day=DAY) if s[0] == 5}
        assert len(carried) == 4 and {s[2] for s in carried} == {"Bar"}
        assert {s[0] for s in all_slot_ids(client, day=DAY)} == {5}  # the seeded world alone
        clock.advance(minutes=1)  # (fixed clock and seed: no period of theirs ends this soon)
        assert {s for s in all_slot_ids(client, day=DAY) if s[0] == 5} == carried
        clock.advance(days=3)  # every first period is over: the model's odds rule now
        later = [{s for s in all_slot_ids(client, day=DAY) if s[0] == 5}]
        for _ in range(5):
            clock.advance(days=1)
            later.append({s for s in all_slot_ids(client, day=DAY) if s[0] == 5})
        assert any(len(found) < len(carried) for found in later)


def test_the_models_own_venues_are_not_carried() -> None:
    own = Simulator(venues=300, seed=7).model.venues[0]
    rows = [{"venue_id": own.venue_id, "name": "Imposter"}]
    world = World.from_rows(7, rows, [[own.venue_id, DAY.isoformat(), "19:00", "Bar", [2]]])
    sim = Simulator(venues=300, seed=7, clock=FakeClock(), world=world)
    assert sim.world is None  # the model's own state governs its venues
    found = sim.model.search(DAY, 2, TimeWindow.around("19:00"), NOW)
    assert all(f.venue.name != "Imposter" for f in found)


async def test_a_seeded_database_keeps_its_open_drops_when_polled(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    settings = Settings(database_url=SecretStr(db_url))
    now = dt.datetime.now(dt.UTC)
    seed(engine, settings, events=4000, past_days=0, venues=50, now=now)
    count = export_world(engine, market_today(settings.zone, now), tmp_path / "world.json")
    assert count > 0
    bucket = bucket_id_for(market_today(settings.zone, now) + dt.timedelta(days=2), "19:00")

    def seeded(sql: str) -> int:
        with engine.connect() as conn:
            return int(conn.execute(text(sql), {"b": bucket}).scalar_one())

    open_before = seeded(f"SELECT count(*) FROM open_slots WHERE bucket_id = :b AND {SEEDED}")
    assert open_before > 0
    clock = FakeClock(now)
    world = World.load(tmp_path / "world.json", 7)
    with Simulator(venues=300, seed=7, clock=clock, world=world) as sim:
        poller = PollerSettings(
            database_url=SecretStr(db_url),
            resy_base_url=sim.base_url,
            per_page=200,
            max_pages=50,
            requests_per_second=100,
        )
        closed = f"SELECT count(*) FROM drop_events WHERE bucket_id = :b AND {SEEDED}"
        closed += " AND event_type = 'CLOSED'"
        history = seeded(closed)
        [outcome] = await poll_once(poller, db_url, bucket)
        assert outcome.applied, outcome
        assert seeded(closed) == history  # not one seeded drop closed
        assert seeded(f"SELECT count(*) FROM open_slots WHERE bucket_id = :b AND {SEEDED}") >= (
            open_before
        )
        clock.advance(days=4)  # past every carried slot's first period
        await poll_once(poller, db_url, bucket)  # so few left: held as a suspected soft block
        [outcome] = await poll_once(poller, db_url, bucket)  # confirmed
        assert outcome.applied, outcome
        assert seeded(closed) > history
