"""What `up` shows while it runs: the services, bucket freshness and the latest drops.

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

SNAPSHOT = text(
    "SELECT count(*) FILTER (WHERE last_healthy_poll_at > now() - interval '2 minutes'),"
    " count(*) FROM discovery_buckets WHERE bucket_date >= current_date - 1"
)
LATEST = text(
    "SELECT e.event_type, coalesce(e.closed_at, e.opened_at), v.name, e.slot_date,"
    " e.slot_time, e.seating_type FROM drop_events e"
    " LEFT JOIN venues v ON v.venue_id = e.venue_id"
    " WHERE e.bucket_date >= current_date - 1"
    " ORDER BY e.id DESC LIMIT 12"
)


@dataclass(frozen=True)
class Snapshot:
    fresh: int
    total: int
    drops: list[tuple[str, ...]]  # event, at (market time), venue, date, time, seating

    def line(self) -> str:
        """One plain line, for `up --plain` and logs."""
        opened = sum(1 for d in self.drops if d[0] == "NEW_DROP")
        latest = ""
        if self.drops:
            event, at, venue, day, slot, _ = self.drops[0]
            latest = f"; latest {event} at {at} {venue} {day} {slot}"
        return (
            f"buckets fresh {self.fresh}/{self.total}; last {len(self.drops)} events: "
            f"{opened} opened, {len(self.drops) - opened} closed{latest}"
        )


def snapshot(engine: Engine, zone: ZoneInfo) -> Snapshot:
    with engine.connect() as conn:
        fresh, total = conn.execute(SNAPSHOT).one()
        rows = conn.execute(LATEST).all()
    drops: list[tuple[str, ...]] = [
        (
            str(r[0]),
            r[1].astimezone(zone).strftime("%H:%M:%S"),
            str(r[2] or "?"),
            str(r[3]),
            r[4].strftime("%H:%M"),
            str(r[5]),
        )
        for r in rows
    ]
    return Snapshot(int(fresh), int(total), drops)


def render(children: list[Child], snap: Snapshot, zone: ZoneInfo) -> Group:
    services = Table(title="dropwatch (Ctrl-C to stop)", expand=True)
    for column in ("service", "where", "pid"):
        services.add_column(column)
    for child in children:
        services.add_row(child.name, child.address, str(child.proc.pid))
    events = Table(
        title=f"buckets fresh (healthy poll < 2 min): {snap.fresh}/{snap.total}; "
        f"times in market time ({zone.key})",
        expand=True,
    )
    for column in ("event", "at", "venue", "date", "time", "seating"):
        events.add_column(column)
    for row in snap.drops:
        events.add_row(*row, style="green" if row[0] == "NEW_DROP" else "red")
    return Group(services, events)
