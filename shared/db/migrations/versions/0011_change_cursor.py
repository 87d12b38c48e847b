"""change cursor: drop_events (xact_id, id) index, change_floor (the retention floor)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

ListChanges and WatchDrops read drop_events after a cursor in commit order: `(xact_id, id) >
(position) AND xact_id < horizon ORDER BY xact_id, id LIMIT n`. Without an index that is a scan
of every retained event and a sort, per read; `ix_drop_events_xact_id_id` makes it one range
scan per day partition, merged (docs/architecture.md, "Change cursor and ListChanges").

`change_floor` holds the highest xact_id the maintenance job removed when it dropped a past
day's partition (one row, written in the dropping transaction): a cursor at or below it may
have lost events and is answered OUT_OF_RANGE instead of silently skipping them.

Cost: an index on a partitioned parent cannot be built CONCURRENTLY. `CREATE INDEX` on the
parent builds one index per day partition and holds a SHARE lock on each (and the parent) until
the migration commits: the poller's inserts wait for the build (reads go on). Measured on this
machine: 0.12 s for 200,000 events in 30 day partitions (6.7 MB of index), so a few seconds
for a month of a busy market. Where that stall is too long, build each partition's index
CONCURRENTLY by hand first (same columns), then this `CREATE INDEX` only attaches them. Every
later event maintains one more small index (two 8-byte keys): lost in the noise at a poll's
size (1,000 events: 16-24 ms with it, 20-27 ms without, medians of two rounds), up to ~1.5x
on a bulk load of 200,000 events (`dropwatch seed`). The price of a cursor read that does not
grow with history: 2-6 ms at 200,000 events where a scan and sort took 25-32 ms.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_drop_events_xact_id_id", "drop_events", ["xact_id", "id"])
    # One row: retention drops whole days of every market at once.
    op.execute(
        """
        CREATE TABLE change_floor (
            singleton boolean DEFAULT true NOT NULL,
            pruned_through xid8 NOT NULL,
            pruned_day date NOT NULL,
            pruned_at timestamp with time zone NOT NULL,
            CONSTRAINT pk_change_floor PRIMARY KEY (singleton),
            CONSTRAINT ck_change_floor_singleton CHECK (singleton)
        )
        """
    )


def downgrade() -> None:
    op.drop_table("change_floor")
    op.drop_index("ix_drop_events_xact_id_id", table_name="drop_events")
