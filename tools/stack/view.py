"""What `up` shows while it runs: the services, bucket freshness and the latest drops (pushed
by the feed's WatchDrops stream: tools/stack/drops.py).

Every time is market time (`DROPWATCH_MARKET_TIMEZONE`, New York by default), the zone of the
slot dates and times beside it, and the column headers say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from rich.console import Group
from rich.table import Table
from sqlalchemy import Engine, text

from tools.stack.children import Child
from tools.stack.drops import LiveDrops

SNAPSHOT = text(
    "SELECT count(*) FILTER (WHERE last_healthy_poll_at > now() - interval '2 minutes'),"
    " count(*) FROM discovery_buckets WHERE bucket_date >= current_date - 1"
)


@dataclass(frozen=True)
class Snapshot:
    fresh: int
    total: int
    drops: list[tuple[str, ...]]  # event, at (market time), venue, date, time, seating
    stream: str = ""  # the drops' WatchDrops stream: streaming, or why not

    def line(self) -> str:
        """One plain line, for `up --plain` and logs."""
        opened, closed = (sum(1 for d in self.drops if d[0] == e) for e in ("NEW_DROP", "CLOSED"))
        latest = ""
        if self.drops:
            event, at, venue, day, slot, _ = self.drops[0]
            latest = f"; latest {event} at {at} {venue} {day} {slot}"
        return (
            f"buckets fresh {self.fresh}/{self.total}; last {len(self.drops)} events: "
            f"{opened} opened, {closed} closed{latest}"
        )


def snapshot(engine: Engine, drops: LiveDrops) -> Snapshot:
    """Bucket freshness from the database; the latest drops as the feed's stream pushed them."""
    with engine.connect() as conn:
        fresh, total = conn.execute(SNAPSHOT).one()
    return Snapshot(int(fresh), int(total), drops.rows(), drops.status)


def render(children: list[Child], snap: Snapshot, zone: ZoneInfo) -> Group:
    services = Table(title="dropwatch (Ctrl-C to stop)", expand=True)
    for column in ("service", "where", "pid"):
        services.add_column(column)
    for child in children:
        services.add_row(child.name, child.address, str(child.proc.pid))
    events = Table(
        title=f"buckets fresh (healthy poll < 2 min): {snap.fresh}/{snap.total}; "
        f"times in market time ({zone.key}); drops: WatchDrops {snap.stream}",
        expand=True,
    )
    for column in ("event", "at", "venue", "date", "time", "seating"):
        events.add_column(column)
    for row in snap.drops:
        style = {"NEW_DROP": "green", "CLOSED": "red"}.get(row[0], "yellow")
        events.add_row(*row, style=style)
    return Group(services, events)
