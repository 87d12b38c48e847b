"""Database layer: engine factory, pool metrics, models, migrations, embedded server.

Query functions live here and never commit: the RPC handler or job that calls them owns the
transaction.
"""
