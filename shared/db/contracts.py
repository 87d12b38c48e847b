"""Names the services agree on through PostgreSQL, each defined once.

A poller and the feed meet on a NOTIFY channel; the poller, the maintenance run, the seeder and
the migrator meet on advisory locks. Keeping every key in one table is what guarantees no two
purposes ever share a key by accident.
"""

from __future__ import annotations

from typing import Final

# The poller notifies after a write that opened or closed slots; the feed listens and clears
# its answer cache.
FEED_CHANNEL: Final = "dropwatch_feed"

# Advisory-lock keys (bigint): "dw" in the high bytes, then the purpose.
PARTITION_DDL_LOCK: Final = 0x64770001  # creating and dropping drop_events partitions
MIGRATE_LOCK: Final = 0x64770002  # one migrator at a time
MAINTENANCE_RUN_LOCK: Final = 0x64770003  # one daily maintenance run at a time
