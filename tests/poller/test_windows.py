"""The poller reads the learned release windows (services/poller/windows.py), real PostgreSQL."""

from __future__ import annotations

import datetime as dt

from pydantic import SecretStr
from sqlalchemy import Engine

from services.maintenance import store
from services.poller.windows import ReleaseWindow, load_release_windows
from shared.db.engine import make_async_engine
from shared.settings import Settings
from tests.maintenance.releases import insert_drops, release

TODAY = dt.date(2026, 12, 10)
DAYS = [TODAY - dt.timedelta(days=n) for n in (3, 2, 1, 0)]


async def test_the_scheduler_reads_what_maintenance_learned(db_url: str, engine: Engine) -> None:
    drops = [d for day in DAYS for d in release(5, day, dt.time(0, 0, 5), 13, slots=6)]
    drops += [d for day in DAYS for d in release(6, day, dt.time(10, 15), 7, anchors=("15:00",))]
    insert_drops(engine, drops)
    with engine.begin() as conn:
        store.learn_release_windows(
            conn, market="nyc", zone="America/New_York", today=TODAY, params=store.WindowParams()
        )
    async_engine = make_async_engine(Settings(database_url=SecretStr(db_url)), name="w")
    try:
        async with async_engine.connect() as conn:
            found = await load_release_windows(conn, "nyc")
            assert await load_release_windows(conn, "sf") == []
    finally:
        await async_engine.dispose()
    assert found == [
        ReleaseWindow(5, 13, 0, ("19:00",), 4, DAYS[0], TODAY, 6.0),
        ReleaseWindow(6, 7, 615, ("15:00",), 4, DAYS[0], TODAY, 4.0),
    ]
    assert [w.local_time for w in found] == [dt.time(0, 0), dt.time(10, 15)]
