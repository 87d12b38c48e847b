"""A day table becomes a drop_events partition: the parent's indexes, then ATTACH.

The indexes are read from the catalog, so seeding follows every migration. ATTACH PARTITION
adopts a partition's index that matches one of the parent's (a constraint's index only if it
backs the same kind of constraint) instead of building it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, text

from shared.db.partitions import PARENT, partition_name


@dataclass(frozen=True)
class Index:
    """One index of the parent, to build on a day table before it is attached."""

    name: str
    constraint: str | None  # e.g. "PRIMARY KEY (id, bucket_date)"; None for a plain index
    definition: str  # what follows USING in its CREATE INDEX: "btree (bucket_id)"
    unique: bool

    def ddl(self, table: str) -> str:
        # The parent's index name with the partition's name in it (or in front of it).
        if PARENT in self.name:
            name = self.name.replace(PARENT, table, 1)[:63]
        else:
            name = f"{table}_{self.name}"[:63]
        if self.constraint is not None:
            return f"ALTER TABLE {table} ADD CONSTRAINT {name} {self.constraint}"
        unique = "UNIQUE " if self.unique else ""
        return f"CREATE {unique}INDEX {name} ON {table} USING {self.definition}"


def indexes(conn: Connection) -> list[Index]:
    """The parent's indexes."""
    rows = conn.execute(
        text(
            """
            SELECT i.relname, pg_get_indexdef(x.indexrelid), x.indisunique,
                   pg_get_constraintdef(c.oid)
            FROM pg_index x
            JOIN pg_class i ON i.oid = x.indexrelid
            LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid
                 AND c.contype IN ('p', 'u', 'x')
            WHERE x.indrelid = CAST(:parent AS regclass)
            ORDER BY i.relname
            """
        ),
        {"parent": PARENT},
    )
    return [
        Index(name, constraint, definition.split(" USING ", 1)[1], unique)
        for name, definition, unique, constraint in rows
    ]


def attach(conn: Connection, day: dt.date) -> None:
    """Attach the built day table; a CHECK matching the bound spares ATTACH its scan."""
    name = partition_name(day)
    lower, upper = day.isoformat(), (day + dt.timedelta(days=1)).isoformat()
    conn.execute(
        text(
            f"ALTER TABLE {name} ADD CONSTRAINT {name}_bound"
            f" CHECK (bucket_date >= '{lower}' AND bucket_date < '{upper}')"
        )
    )
    conn.execute(
        text(
            f"ALTER TABLE {PARENT} ATTACH PARTITION {name}"
            f" FOR VALUES FROM ('{lower}') TO ('{upper}')"
        )
    )
    conn.execute(text(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bound"))
