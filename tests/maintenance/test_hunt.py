"""A model-based hunt: random run dates, crashes and late events against real PostgreSQL.

The database clock moves forward only; `--now` is random around it (days back, repeated, a
little or days ahead); a run may crash at any checkpoint (after a step commits, or inside a
day's transaction); the poller writes events for live and past days in between. A small model
(every event written, in order) checks after every step that no figure is lost, none double
counted, none replaced by figures of fewer events, and nothing live by the database clock is
dropped. Bounded for CI (6 sequences, about 15 s); `DROPWATCH_HUNT=1` (`make hunt`) runs it
long, `DROPWATCH_HUNT_EXAMPLES` sets its size.
"""

from __future__ import annotations

import datetime as dt
import os
from contextlib import ExitStack
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from pydantic import SecretStr
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from services.maintenance.run import STEPS, run
from services.maintenance.settings import MaintenanceSettings
from shared.db.buckets import bucket_id_for, ensure_configured_buckets, market_today
from shared.db.engine import make_engine
from shared.db.partitions import list_partitions, partition_name
from shared.errors import ConfigError
from tests.conftest import PgServer
from tests.maintenance.helpers import (
    ZONE,
    Ev,
    actual_market_metrics,
    actual_venue_metrics,
    expected_market_metrics,
    expected_venue_metrics,
    write_event,
)

HUNTING = bool(os.environ.get("DROPWATCH_HUNT"))
EXAMPLES = int(os.environ.get("DROPWATCH_HUNT_EXAMPLES", "200")) if HUNTING else 6
START = dt.datetime(2026, 12, 10, 12, 5, tzinfo=dt.UTC)
# --now relative to the database clock; beyond the allowed skew (300 s) it must be refused.
OFFSETS = [
    None,
    dt.timedelta(0),
    dt.timedelta(days=-3),
    dt.timedelta(days=-1),
    dt.timedelta(hours=-5),
    dt.timedelta(minutes=2),
    dt.timedelta(hours=-12, minutes=-30),
    dt.timedelta(days=2),
    dt.timedelta(minutes=10),
]

# A poller's event written while a run is between two steps: (after which step, which day).
LATE = st.none() | st.tuples(st.sampled_from(STEPS), st.integers(-2, 0))


class Crash(Exception):
    """A run dies here (a failed statement or a killed process: the transaction never commits)."""


class Maintenance(RuleBasedStateMachine):
    server: ClassVar[PgServer]
    template: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        name = self.stack.enter_context(self.server.database("dw_model", self.template))
        self.settings = MaintenanceSettings(
            database_url=SecretStr(self.server.url_for(name)), window_days=4
        )
        self.engine: Engine = make_engine(self.settings, name="model")
        self.stack.callback(self.engine.dispose)
        self.real = START  # the database clock
        self.events: dict[dt.date, list[Ev]] = {}  # every event written, in order
        self.counted: dict[dt.date, int] = {}  # day_figures.event_count last seen
        self.final: dict[dt.date, Any] = {}  # final days -> their figures then
        self.rolling: dict[tuple[int, dt.date], int] = {}  # (venue, as of) -> total drops
        self.keys = 0
        self.crashed = 0
        self._ensure()

    def teardown(self) -> None:
        self.stack.close()

    # --- the world ----------------------------------------------------------------------
    def today(self) -> dt.date:
        return market_today(ZONE, self.real)

    def _ensure(self, lag_days: int = 0) -> None:
        """What every poller tick does, by its own clock (`lag_days` behind the database's)."""
        with self.engine.begin() as conn:
            today = self.today() - dt.timedelta(days=lag_days)
            ensure_configured_buckets(conn, self.settings, today)

    @rule(hours=st.integers(1, 40))
    def time_passes(self, hours: int) -> None:
        self.real += dt.timedelta(hours=hours)

    @rule(local=st.sampled_from([dt.time(23, 58, 30), dt.time(14, 59), dt.time(15, 0, 1)]))
    def time_reaches(self, local: dt.time) -> None:
        """The next moment at `local` market time: just before midnight or the cutoff."""
        here = self.real.astimezone(ZONE)
        moment = dt.datetime.combine(here.date(), local, tzinfo=ZONE)
        if moment <= here:
            moment = dt.datetime.combine(here.date() + dt.timedelta(days=1), local, tzinfo=ZONE)
        self.real = moment.astimezone(dt.UTC)

    @rule(days=st.integers(1, 2), late=LATE)
    def the_daily_job_runs(self, days: int, late: tuple[str, int] | None) -> None:
        """Days pass to the CronJob's next 07:05 and it runs, with the pollers in between."""
        here = self.real.astimezone(ZONE)
        at = dt.datetime.combine(here.date() + dt.timedelta(days=days), dt.time(7, 5), ZONE)
        self.real = at.astimezone(dt.UTC)
        self._ensure()
        self._maintain(None, None, late)

    @rule(lag_days=st.sampled_from([0, 0, 1, 3]))
    def poller_tick(self, lag_days: int) -> None:
        self._ensure(lag_days)

    @rule(
        offset=st.integers(-3, 3),
        venue=st.integers(1, 3),
        drop=st.booleans(),
        minutes=st.integers(0, 600),
        duration=st.floats(0, 7200, allow_nan=False),
        prime=st.booleans(),
    )
    def poller_writes(
        self, offset: int, venue: int, drop: bool, minutes: int, duration: float, prime: bool
    ) -> None:
        """An event for a live day, or a late one for a past day (written if it still can be)."""
        at = self.real - dt.timedelta(minutes=minutes)
        kind, length = ("NEW_DROP", None) if drop else ("CLOSED", duration)
        self._write(Ev(venue, self.today() + dt.timedelta(days=offset), kind, at, length, prime))

    def _write(self, event: Ev) -> None:
        day = event.day
        self.keys += 1
        try:
            with self.engine.begin() as conn:
                write_event(conn, event, f"m{self.keys}")
        except IntegrityError:  # no partition: a dropped (or never made) day refuses loudly
            assert day not in self.partitions()
            return
        self.events.setdefault(day, []).append(event)

    @rule(
        offset=st.sampled_from(OFFSETS),
        crash_at=st.none() | st.integers(0, 14),
        late=LATE,
    )
    def maintenance(
        self,
        offset: dt.timedelta | None,
        crash_at: int | None,
        late: tuple[str, int] | None,
    ) -> None:
        self._maintain(offset, crash_at, late)

    def _maintain(
        self,
        offset: dt.timedelta | None,
        crash_at: int | None,
        late: tuple[str, int] | None = None,
    ) -> None:
        """A run at `--now` = database clock + `offset`, crashing at checkpoint `crash_at`;
        `late` = (step, day offset): a poller writes an event for that day once the step
        has committed (mid-run)."""
        now = None if offset is None else self.real + offset
        live_days = {d for d in self.partitions() if d >= self.today()}
        cutoff = bucket_id_for(self.today(), self.settings.cutoff_time)
        live_buckets = {b for b in self.buckets() if b >= cutoff}
        points: list[str] = []

        def checkpoint(name: str) -> None:
            points.append(name)
            if late is not None and name == late[0]:
                day = self.today() + dt.timedelta(days=late[1])
                self._write(Ev(1, day, "NEW_DROP", self.real, None, True))
            if crash_at is not None and len(points) > crash_at:
                raise Crash(name)

        ahead = offset is not None and offset > dt.timedelta(seconds=300)
        try:
            summary = run(self.settings, self.engine, now, checkpoint, clock=lambda: self.real)
        except ConfigError:
            assert ahead, "refused a --now that is not ahead"
            return
        except Crash:
            self.crashed += 1
            return
        finally:
            assert live_days <= set(self.partitions()), "a live day was dropped"
            assert live_buckets <= set(self.buckets()), "a live bucket was deleted"
        assert not ahead, "ran a --now days ahead of the database clock"
        assert summary.today == market_today(ZONE, min(now or self.real, self.real))
        # A finished run leaves no past partition behind (nothing here is an anomaly).
        assert not [d for d in self.partitions() if d < summary.today]
        assert not summary.skipped.keys() - {"--now", "live window"}
        assert self._rolling_of(summary.today) == self._rolling_reference(summary.today)

    def _rolling_of(self, as_of: dt.date) -> dict[int, tuple[int, int]]:
        query = text(
            "SELECT venue_id, total_drops, days_with_drops FROM venue_rolling_metrics"
            " WHERE as_of_date = :d"
        )
        with self.engine.connect() as conn:
            return {r[0]: (r[1], r[2]) for r in conn.execute(query, {"d": as_of})}

    def _rolling_reference(self, as_of: dt.date) -> dict[int, tuple[int, int]]:
        """Per venue, over the window dates before `as_of`: drops and days with drops."""
        first = as_of - dt.timedelta(days=self.settings.rolling_days)
        out: dict[int, tuple[int, int]] = {}
        for (venue, day), figures in actual_venue_metrics(self.engine).items():
            if first <= day < as_of:
                drops, days = out.get(venue, (0, 0))
                out[venue] = (drops + figures[0], days + (figures[0] > 0))
        return out

    # --- what must always hold ----------------------------------------------------------
    def partitions(self) -> list[dt.date]:
        with self.engine.connect() as conn:
            return list_partitions(conn)

    def buckets(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(text("SELECT bucket_id FROM discovery_buckets")).scalars())

    @invariant()
    def nothing_lost_double_counted_or_shrunk(self) -> None:
        with self.engine.connect() as conn:
            recorded = {
                r.window_date: (int(r.event_count), r.final_at is not None)
                for r in conn.execute(text("SELECT * FROM day_figures"))
            }
            held = {
                day: int(conn.execute(text(f"SELECT count(*) FROM {partition_name(day)}")).one()[0])
                for day in list_partitions(conn)
            }
        venues, markets = actual_venue_metrics(self.engine), actual_market_metrics(self.engine)
        for day, events in self.events.items():
            if day in held:  # not dropped: every event written is still there
                assert held[day] == len(events), f"{day}: events lost from a live partition"
            else:
                assert recorded.get(day, (0, False)) == (len(events), True), f"{day}: lost"
        for day, (counted, final) in recorded.items():
            assert counted >= self.counted.get(day, 0), f"{day}: figures of fewer events"
            self.counted[day] = counted
            # The figures are exactly those of the first `counted` events written that day.
            written = self.events.get(day, [])[:counted]
            assert len(written) == counted, f"{day}: figures count events never written"
            mine = {k: v for k, v in venues.items() if k[1] == day}
            assert mine == expected_venue_metrics(written, {day}), f"{day}: venue figures"
            want = expected_market_metrics(written, {day})[day]
            assert markets.get(day) == want, f"{day}: market figures"
            if final:
                assert day not in held, f"{day}: a final day was recreated"
                figures = (mine, markets.get(day))
                assert self.final.setdefault(day, figures) == figures, f"{day}: final changed"

    @invariant()
    def rolling_figures_never_shrink(self) -> None:
        """A rolling row is recomputed only from `venue_metrics`, which only grows."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT venue_id, as_of_date, total_drops FROM venue_rolling_metrics")
            ).all()
        now = {(r.venue_id, r.as_of_date): int(r.total_drops) for r in rows}
        for key, total in self.rolling.items():
            assert now.get(key, 0) >= total, f"rolling {key}: {total} -> {now.get(key)}"
        self.rolling = now

    @precondition(lambda self: self.crashed > 0)
    @rule()
    def a_clean_run_repairs_every_crash(self) -> None:
        summary = run(self.settings, self.engine, None, clock=lambda: self.real)
        assert summary.ran and not summary.skipped
        self.crashed = 0


@pytest.mark.slow
@pytest.mark.timeout(0 if HUNTING else 300)  # 0: no limit; shrinking a failure takes a while
def test_maintenance_against_a_model(pg_server: PgServer, template_db: str) -> None:
    Maintenance.server, Maintenance.template = pg_server, template_db
    run_state_machine_as_test(
        Maintenance,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            # No "explain" phase: it traces every line, far too slow around database calls.
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        ),
    )
