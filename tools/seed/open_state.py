"""Seeded open state goes to open_slots in one bulk step, after the days that stage it.

The loaders write each live day's open slots to a bare staging table (no index, no foreign
key) as part of that day's transaction. `move` then, in one transaction, drops open_slots'
indexes and constraints, copies the staged rows in, and rebuilds them: building an index once
over every row is several times cheaper than maintaining four indexes and a foreign key check
row by row (docs/architecture.md, "Seeding"). A crash rolls the whole move back, indexes
included; the staged rows stay, and the next seed moves them before anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

TARGET = "open_slots"
STAGE = "seed_open_slots"


def stage(conn: Connection) -> None:
    """Create the (empty) staging table the day loaders write open slots to."""
    conn.execute(text(f"CREATE TABLE {STAGE} (LIKE {TARGET} INCLUDING DEFAULTS)"))


def staged(conn: Connection) -> bool:
    return bool(conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": STAGE}).scalar_one())


def move(conn: Connection, *, leftover: bool = False) -> int:
    """Move the staged rows into open_slots and drop the stage; returns the rows moved.

    `leftover`: the stage is an interrupted seed's, so its rows may have gone stale since:
    those of a bucket that no longer exists, or of a slot the poller has written since, are
    dropped (the database's current state wins).

    Locks discovery_buckets (rebuilding the foreign key needs it) and then open_slots, in the
    order a poll takes them, until commit: the poller and the feed wait for the move (about
    2 s for 300k rows) and never see open state half-moved. Seed with the services stopped.
    """
    if not staged(conn):
        return 0
    conn.execute(text("SET LOCAL statement_timeout = 0"))
    conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
    conn.execute(text(f"LOCK TABLE discovery_buckets, {TARGET} IN ACCESS EXCLUSIVE MODE"))
    if leftover:
        conn.execute(
            text(
                f"""
                DELETE FROM {STAGE} s
                WHERE NOT EXISTS (SELECT 1 FROM discovery_buckets b
                                  WHERE b.bucket_id = s.bucket_id)
                   OR EXISTS (SELECT 1 FROM {TARGET} o
                              WHERE o.bucket_id = s.bucket_id AND o.slot_id = s.slot_id)
                """
            )
        )
    rebuilt = definitions(conn)
    for item in reversed(rebuilt):  # foreign keys first, the primary key last
        conn.execute(text(item.drop))
    if not conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {TARGET})")).scalar_one():
        # A new, empty file: with wal_level = minimal its rows skip the WAL.
        conn.execute(text(f"TRUNCATE {TARGET}"))
    moved = conn.execute(text(f"INSERT INTO {TARGET} SELECT * FROM {STAGE}")).rowcount
    for item in rebuilt:
        conn.execute(text(item.create))
    conn.execute(text(f"DROP TABLE {STAGE}"))
    conn.execute(text(f"ANALYZE {TARGET}"))
    return int(moved)


@dataclass(frozen=True)
class Definition:
    drop: str
    create: str


def definitions(conn: Connection) -> list[Definition]:
    """open_slots' constraints and indexes, read from the catalog (so the move follows every
    migration), in the order to rebuild them: keys, then plain indexes, then foreign keys."""
    constraints = conn.execute(
        text(
            """
            SELECT quote_ident(conname), pg_get_constraintdef(oid), contype
            FROM pg_constraint
            WHERE conrelid = CAST(:t AS regclass) AND contype IN ('p', 'u', 'x', 'f')
            ORDER BY contype = 'f', contype <> 'p', conname
            """
        ),
        {"t": TARGET},
    ).all()
    indexes = conn.execute(
        text(
            """
            SELECT quote_ident(i.relname), pg_get_indexdef(x.indexrelid)
            FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
            WHERE x.indrelid = CAST(:t AS regclass)
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                              WHERE c.conindid = x.indexrelid AND c.conrelid = x.indrelid)
            ORDER BY i.relname
            """
        ),
        {"t": TARGET},
    ).all()

    def constraint(name: str, definition: str) -> Definition:
        return Definition(
            f"ALTER TABLE {TARGET} DROP CONSTRAINT {name}",
            f"ALTER TABLE {TARGET} ADD CONSTRAINT {name} {definition}",
        )

    keys = [constraint(n, d) for n, d, kind in constraints if kind != "f"]
    foreign = [constraint(n, d) for n, d, kind in constraints if kind == "f"]
    plain = [Definition(f"DROP INDEX {name}", ddl) for name, ddl in indexes]
    return keys + plain + foreign
