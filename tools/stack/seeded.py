"""What `up` hands the simulator so that a seeded database and the simulation are one world.

The live open slots in the database, with their venues, go to `.dropwatch/world.json`; the
simulator carries those of venues its model does not have (the seeded ones) until its model
closes them (tools/simulator/world.py).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlalchemy import Engine, text

OPEN = text(
    "SELECT o.venue_id, o.slot_date, o.slot_time, o.seating_type, o.party_sizes,"
    " v.name, v.neighborhood, v.price_range, v.url_slug"
    " FROM open_slots o LEFT JOIN venues v ON v.venue_id = o.venue_id"
    " WHERE o.slot_date >= :today"
)


def export_world(engine: Engine, today: dt.date, path: Path) -> int:
    """Write the open slots from `today` on to `path`; returns how many (0: no file)."""
    slots: dict[tuple[int, str, str, str], set[int]] = {}
    venues: dict[int, dict[str, object]] = {}
    with engine.connect() as conn:
        for row in conn.execute(OPEN, {"today": today}):
            key = (int(row.venue_id), row.slot_date.isoformat(), row.slot_time.strftime("%H:%M"))
            slots.setdefault((*key, str(row.seating_type)), set()).update(row.party_sizes)
            venues[int(row.venue_id)] = {
                "venue_id": int(row.venue_id),
                "name": row.name,
                "neighborhood": row.neighborhood,
                "price_range": row.price_range,
                "url_slug": row.url_slug,
            }
    if not slots:
        path.unlink(missing_ok=True)
        return 0
    rows = [[*key, sorted(sizes)] for key, sizes in sorted(slots.items())]
    path.write_text(json.dumps({"venues": list(venues.values()), "slots": rows}))
    return len(rows)
