"""The provider interface: what the poll logic needs from a reservation platform.

A new platform implements `Provider`; the poll, diff and scheduling code stay as they are.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from services.poller.slots import BucketFetch
from shared.shares import Share, bucket_share


@dataclass(frozen=True)
class BucketSpec:
    """What to fetch for one discovery bucket; `anchors` are the market's (none: only ours)."""

    bucket_id: str
    day: dt.date
    anchor: dt.time
    party_sizes: tuple[int, ...]
    window: dt.timedelta
    anchors: tuple[dt.time, ...] = ()

    @cached_property
    def share(self) -> Share:
        """The times of day this bucket keeps (shared/shares.py): a slot has one bucket."""
        return bucket_share(self.anchor, self.anchors, self.window)

    def contains(self, start: dt.datetime) -> bool:
        """Is a local start time this bucket's (same day, within its share)?"""
        return start.date() == self.day and self.share.contains(start.time())


class Provider(Protocol):
    name: str

    async def fetch_bucket(self, spec: BucketSpec, deadline: float) -> BucketFetch:
        """Every slot of the bucket, or raise `FetchError`; `deadline` is a monotonic time."""
        ...

    async def aclose(self) -> None: ...
