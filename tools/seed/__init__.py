"""`dropwatch seed`: realistic synthetic history, in the shapes the poller writes, loaded fast.

`plan.py` decides what to load (buckets, pairs, open drops, slots), `sql.py` generates one
day of it set-based, `loader.py` builds and attaches each day. The benchmarks and tests load
their data through here too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import Engine

from shared.settings import Settings
from tools.seed import open_state
from tools.seed.loader import SeedResult, load
from tools.seed.plan import SeedPlan, Shape, make_plan

__all__ = ["SeedPlan", "SeedResult", "Shape", "load", "make_plan", "open_state", "seed"]


def seed(
    engine: Engine,
    settings: Settings,
    *,
    events: int,
    past_days: int = 14,
    venues: int = 2000,
    now: dt.datetime | None = None,
    shape: Shape | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SeedResult:
    """Load about `events` drop events over `past_days` past days and the live window."""
    plan = make_plan(
        settings, events, now=now, past_days=past_days, venues=venues, shape=shape or Shape()
    )
    return load(engine, plan, progress=progress)
