"""Database layer: engine factory, URLs, pool metrics, models, migrations, embedded server.

The statements every service uses are in `sql.py`; the functions that run them never commit
(except session advisory locks): the RPC handler or job that calls them owns the transaction.
The names services agree on (NOTIFY channel, lock keys) are in `contracts.py`.
"""
