"""The poller's SQL, every statement it sends, by what it is for.

- `lease.py`: leases on `discovery_buckets` (fixed schedule, one named bucket, the adaptive
  schedule's chosen ones), the version check before a write, the release.
- `write.py`: the write of one poll: venues, the one-statement diff of a healthy poll
  (`WRITE_POLL`), the bookkeeping of an unhealthy one.
- `schedule.py`: what the adaptive schedule reads (live buckets, change rates, pages, the hour
  profile).
- `budget.py`, `windows.py`: the shared request budget's claim, the learned release windows.

The functions that run these are in `services/poller/store/` (and `budget.py`, `windows.py`
beside it); `poll.py` and `scheduler.py` own the transactions. Callers use this package's
names (`sql.WRITE_POLL`); which module holds a statement is for the reader.
"""

from services.poller.sql.budget import CLAIM_BUDGET
from services.poller.sql.lease import (
    CHECK_LEASE,
    LEASE_CHOSEN,
    LEASE_COLUMNS,
    LEASE_DUE,
    LEASE_ONE,
    RELEASE_LEASE,
)
from services.poller.sql.schedule import BUCKET_PAGES, CHANGE_RATES, HOUR_PROFILE, SCHEDULE_STATE
from services.poller.sql.windows import RELEASE_WINDOWS
from services.poller.sql.write import RECORD_UNHEALTHY, UPSERT_VENUES, WRITE_POLL

__all__ = [
    "BUCKET_PAGES",
    "CHANGE_RATES",
    "CHECK_LEASE",
    "CLAIM_BUDGET",
    "HOUR_PROFILE",
    "LEASE_CHOSEN",
    "LEASE_COLUMNS",
    "LEASE_DUE",
    "LEASE_ONE",
    "RECORD_UNHEALTHY",
    "RELEASE_LEASE",
    "RELEASE_WINDOWS",
    "SCHEDULE_STATE",
    "UPSERT_VENUES",
    "WRITE_POLL",
]
