"""Which bucket a slot time belongs to: every time of day to at most one of a market's anchors.

A bucket's search covers its anchor +/- the search window, so with anchors 15:00 and 19:00 and
a 2 h window a 17:00 table is returned by both searches and would open twice. Each bucket keeps
only its *share*: the times nearer its anchor than any other anchor of the market (a time
exactly halfway between two anchors goes to the later one), within its search window. Shares
of one market never overlap. Pure functions, so the poller, the feed, maintenance and the
benchmarks can all ask; see docs/architecture.md, The poller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

MINUTES_PER_DAY = 24 * 60


def minute_of_day(moment: dt.time) -> int:
    """The minute a time falls in (slot times are cut to the minute; seconds never count)."""
    return moment.hour * 60 + moment.minute


@dataclass(frozen=True)
class Share:
    """The minutes of the day `[start, end)` a bucket keeps (`end` may be 1440, midnight)."""

    start: int
    end: int

    def contains(self, moment: dt.time) -> bool:
        return self.start <= minute_of_day(moment) < self.end


def bucket_share(anchor: dt.time, anchors: Iterable[dt.time], window: dt.timedelta) -> Share:
    """The share of the bucket at `anchor` among the market's `anchors` (in any order; the
    anchor itself need not be listed), with a search window of `window` either side."""
    own = minute_of_day(anchor)
    reach = int(window.total_seconds() // 60)
    start, end = max(0, own - reach), min(MINUTES_PER_DAY, own + reach + 1)
    others = {minute_of_day(a) for a in anchors} - {own}
    earlier = [a for a in others if a < own]
    later = [a for a in others if a > own]
    if earlier:  # from the midpoint with the previous anchor on (a tie is ours: we are later)
        start = max(start, _ceil_half(max(earlier) + own))
    if later:  # up to the midpoint with the next anchor (a tie is the next anchor's)
        end = min(end, _ceil_half(own + min(later)))
    return Share(start, max(start, end))


def _ceil_half(total: int) -> int:
    """ceil(total / 2): the first whole minute at or after the midpoint of two anchors."""
    return -(-total // 2)
