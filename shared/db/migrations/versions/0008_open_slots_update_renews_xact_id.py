"""open_slots: an UPDATE renews xact_id (a resized slot is written by the resizing poll)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

`xact_id` (0004) was only set on INSERT, so a poll that changed an open slot's party sizes
(an UPDATE) left the row looking as old as its first write: a page walk started before that
poll saw the new sizes on its later pages, and a slot that became bookable for the requested
size could hide an item of the first answer or slip in behind the cursor. Every UPDATE of a
row now records the updating transaction, as an INSERT does (docs/architecture.md, "Commit
order"). The poller's statements do not change. Only resizes update open_slots, so the cost is
one trigger call per resized slot.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION open_slots_renew_xact_id() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.xact_id := pg_current_xact_id();
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER open_slots_renew_xact_id BEFORE UPDATE ON open_slots"
        " FOR EACH ROW EXECUTE FUNCTION open_slots_renew_xact_id()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER open_slots_renew_xact_id ON open_slots")
    op.execute("DROP FUNCTION open_slots_renew_xact_id()")
