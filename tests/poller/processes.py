"""Real poller processes against a scripted market: the detection tests' helpers.

The market is scripted on the in-process simulator: every live day holds a few tables that
never change (quiet buckets), and one bucket gets short-lived drops, each a distinct table
open during one interval of the clock (`ScriptedSlot.open_during`), so the script is the
ground truth. `RecordingSimulator` notes when each search arrived and which bucket it was
for, which is how the tests see poll intervals and the request rate from the provider's side.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from prometheus_client.parser import text_string_to_metric_families

from shared.db.buckets import market_today
from tests.conftest import REPO_ROOT, free_port
from tools.simulator.server import SEARCH_PATH, Response, ScriptedSlot, ScriptedVenue, Simulator

ZONE = ZoneInfo("America/New_York")
ANCHORS = ("15:00", "19:00")
API_KEY = "detection-test-key"
CHURN_VENUE = 9001


@dataclass(frozen=True)
class Search:
    """One search request as the simulator received it (`at`: POSIX seconds)."""

    at: float
    day: str
    anchor: str | None
    party_size: int
    page: int

    @property
    def bucket_id(self) -> str:
        return f"{self.day}_{self.anchor}"


class RecordingSimulator(Simulator):
    """The simulator, noting the arrival time and bucket of every search request."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._log_lock = threading.Lock()
        self._searches: list[Search] = []

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        if method == "POST" and path.split("?", 1)[0] == SEARCH_PATH:
            at = time.time()
            try:
                q = json.loads(body)
                f = q["slot_filter"]
                search = Search(
                    at, f["day"], f.get("time_filter"), int(f["party_size"]), int(q["page"])
                )
            except (ValueError, KeyError, TypeError):
                search = Search(at, "?", None, 0, 0)
            with self._log_lock:
                self._searches.append(search)
        return super().handle(method, path, headers, body)

    def searches(self) -> list[Search]:
        with self._log_lock:
            return list(self._searches)

    def poll_times(self, bucket_id: str) -> list[float]:
        """When each poll of the bucket started: its first request (party size 2, page 1)."""
        return [
            s.at
            for s in self.searches()
            if s.bucket_id == bucket_id and s.party_size == 2 and s.page == 1
        ]


@dataclass(frozen=True)
class TrueDrop:
    """A scripted drop: table `time` of `day` at the churning venue, open in [start, end)."""

    day: dt.date
    time: str
    start: float
    end: float


def market_days(window_days: int) -> list[dt.date]:
    """The live days, with a day either side (a run that crosses market midnight still finds
    its buckets scripted)."""
    today = market_today(ZONE)
    return [today + dt.timedelta(days=d) for d in range(-1, window_days + 1)]


def quiet_venues() -> list[ScriptedVenue]:
    """Tables that never change: a few in every bucket, so no answer is ever empty."""
    return [
        ScriptedVenue(7001, "Quiet Table", [ScriptedSlot(t) for t in ("14:00", "15:30", "19:30")]),
        ScriptedVenue(7002, "Still Room", [ScriptedSlot(t) for t in ("14:30", "18:30", "20:00")]),
    ]


def script_quiet_market(sim: Simulator, window_days: int) -> None:
    for day in market_days(window_days):
        sim.script_day(day, quiet_venues())


def churn(day: dt.date, first_start: float, count: int, every: float) -> list[TrueDrop]:
    """`count` drops `every` seconds from `first_start`, living 3, 4, 5, 6, 3, ... seconds, each
    a distinct table between 18:00 and 20:30 (the 19:00 bucket's share)."""
    drops = []
    for i in range(count):
        minute = 18 * 60 + 10 * i
        start = first_start + every * i
        drops.append(
            TrueDrop(day, f"{minute // 60:02d}:{minute % 60:02d}", start, start + 3 + i % 4)
        )
    return drops


def script_churn(sim: Simulator, drops: Sequence[TrueDrop]) -> None:
    """The drops' day: the quiet tables plus the churning venue's timed tables."""
    days = {d.day for d in drops}
    for day in days:
        slots = [
            ScriptedSlot(d.time, open_during=((d.start, d.end),)) for d in drops if d.day == day
        ]
        sim.script_day(day, [*quiet_venues(), ScriptedVenue(CHURN_VENUE, "Churn House", slots)])


def poller_env(db_url: str, base_url: str, **settings: str) -> dict[str, str]:
    """The environment of a poller process: no inherited DROPWATCH_* setting, then these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    env.update(
        DROPWATCH_DATABASE_URL=db_url,
        DROPWATCH_RESY_BASE_URL=base_url,
        DROPWATCH_RESY_API_KEY=API_KEY,
        DROPWATCH_MARKET_TIMEZONE=str(ZONE),
        DROPWATCH_ANCHORS=",".join(ANCHORS),
        DROPWATCH_LOG_LEVEL="INFO",
    )
    env.update({f"DROPWATCH_{name.upper()}": value for name, value in settings.items()})
    return env


@dataclass
class PollerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every sample named `name` on the replica's /metrics: (labels, value)."""
        body = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return [
            (dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(body)
            for sample in family.samples
            if sample.name == name
        ]

    def metric(self, name: str) -> float:
        """The sum of every sample named `name`."""
        return sum(value for _, value in self.samples(name))


@contextmanager
def running_poller(env: Mapping[str, str], log_path: Path) -> Iterator[PollerProcess]:
    """`python -m services.poller` until the block ends, then SIGTERM (kill if it hangs)."""
    metrics_port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.poller",
                "--metrics-port",
                str(metrics_port),
                "--health-port",
                str(free_port()),
            ],
            cwd=REPO_ROOT,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield PollerProcess(proc, log_path, metrics_port)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
