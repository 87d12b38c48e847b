"""The provider interface: what the poll logic needs from a reservation platform.

A new platform implements `Provider`; the poll, diff and scheduling code stay as they are.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from services.poller.slots import BucketFetch


@dataclass(frozen=True)
class BucketSpec:
    """What to fetch for one discovery bucket."""

    bucket_id: str
    day: dt.date
    anchor: dt.time
    party_sizes: tuple[int, ...]
    window: dt.timedelta

    def contains(self, start: dt.datetime) -> bool:
        """Is a local start time inside this bucket (same day, anchor +/- window)?"""
        if start.date() != self.day:
            return False
        centre = dt.datetime.combine(self.day, self.anchor)
        return centre - self.window <= start <= centre + self.window


class Provider(Protocol):
    name: str

    async def fetch_bucket(self, spec: BucketSpec, deadline: float) -> BucketFetch:
        """Every slot of the bucket, or raise `FetchError`; `deadline` is a monotonic time."""
        ...

    async def aclose(self) -> None: ...
