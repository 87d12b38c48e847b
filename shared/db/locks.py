"""Advisory locks, keyed by `shared.db.contracts`: one place that takes and releases them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection

from shared.db import sql


@contextmanager
def session_lock(conn: Connection, key: int, *, wait: bool = True) -> Iterator[bool]:
    """Hold the session lock `key` on `conn` for the block; yields whether it was taken.

    The lock is committed at once so that it outlives the caller's transactions, which run on
    other connections or commit on this one. With `wait=False` a held lock yields False (and
    nothing is released at the end).
    """
    if wait:
        conn.execute(sql.LOCK, {"k": key})
        got = True
    else:
        got = bool(conn.execute(sql.TRY_LOCK, {"k": key}).scalar_one())
    conn.commit()
    try:
        yield got
    finally:
        if got:
            conn.execute(sql.UNLOCK, {"k": key})
            conn.commit()


def transaction_lock(conn: Connection, key: int) -> None:
    """Take the lock `key` until the current transaction ends (others queue behind it)."""
    conn.execute(sql.XACT_LOCK, {"k": key})
