"""A local stand-in for Resy's venue-search API.

The poller, `make run`, the tests and the benchmarks talk to this real HTTP server instead of
api.resy.com, so they exercise the same JSON shapes, headers and failure modes without touching
the real service. `catalog` holds the venues, `model` decides which tables are open (pure,
seeded, a function of simulated time), `world` carries a seeded database's open drops,
`faults` queues the failures a test wants, `server` answers requests (`search` reads and
writes Resy's JSON) and `transport` speaks HTTP.
"""
