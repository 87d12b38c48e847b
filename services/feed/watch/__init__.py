"""WatchDrops: one change reader per replica (`hub.py`), many streams (`stream.py`).

The hub reads each committed change once, woken by the poller's NOTIFY or its periodic check,
and hands it to the bounded buffer of every open stream whose filter matches
(`subscription.py`). A stream that resumes from an older cursor, or starts with its initial
state, first catches up from the database itself and then takes over from the hub with no gap
and no duplicate (docs/architecture.md, "WatchDrops: one reader, many streams").
"""
