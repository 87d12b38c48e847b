"""What migrations and the schema comparison leave out: the run-time daily partitions."""

from __future__ import annotations

from shared.db.partitions import is_partition_name


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Daily partitions of drop_events are managed at run time, not by migrations."""
    return not (type_ == "table" and name is not None and is_partition_name(name))
