"""The release windows the maintenance job learned, as the poller reads them (windows.py)."""

from __future__ import annotations

from sqlalchemy import text

# What the maintenance job learned (services/maintenance/sql.py, LEARN_RELEASE_WINDOWS).
RELEASE_WINDOWS = text(
    """
    SELECT venue_id, lead_days, release_minute, time_slots, days_seen, first_seen, last_seen,
           slots_per_release
    FROM release_windows
    WHERE market = :market
    ORDER BY release_minute, venue_id, lead_days
    """
)
