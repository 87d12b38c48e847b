"""The poller's database layer: runs the statements of `services/poller/sql/` and shapes rows.

- `lease.py`: `LeasedBucket`, leasing (fixed, one named bucket, the adaptive plan's choice),
  `check_lease`, `release_lease`.
- `write.py`: one poll's write: `upsert_venues`, `write_healthy_poll`, `record_unhealthy`.
- `schedule.py`: what the adaptive schedule reads (`read_schedule_state`, change rates, pages,
  hour profile).

Functions here never commit; `services.poller.poll` and the scheduler own the transactions.
A healthy poll is three statements whatever the number of new or closed slots:
`check_lease`, `upsert_venues`, `write_healthy_poll`. Callers use this package's names
(`store.write_healthy_poll`).
"""

from services.poller.store.lease import (
    BASELINE_POLLS,
    LeasedBucket,
    LeaseLostError,
    check_lease,
    lease_chosen,
    lease_due,
    lease_one,
    release_lease,
)
from services.poller.store.schedule import (
    ChangeRates,
    ScheduleRow,
    read_change_rates,
    read_extra_pages,
    read_hour_profile,
    read_schedule_state,
)
from services.poller.store.write import (
    WriteResult,
    record_unhealthy,
    upsert_venues,
    write_healthy_poll,
)

__all__ = [
    "BASELINE_POLLS",
    "ChangeRates",
    "LeaseLostError",
    "LeasedBucket",
    "ScheduleRow",
    "WriteResult",
    "check_lease",
    "lease_chosen",
    "lease_due",
    "lease_one",
    "read_change_rates",
    "read_extra_pages",
    "read_hour_profile",
    "read_schedule_state",
    "record_unhealthy",
    "release_lease",
    "upsert_venues",
    "write_healthy_poll",
]
