"""The one exception root of dropwatch.

Driver and library errors are translated into these at the edge where they happen
(`raise ... from exc`), so callers only ever handle dropwatch's own types.
"""

from __future__ import annotations


class DropwatchError(Exception):
    """Root of every error dropwatch raises on purpose."""


class ConfigError(DropwatchError):
    """A setting is missing or invalid. The message names the environment variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class DatabaseUnavailableError(DropwatchError):
    """PostgreSQL could not be reached (or the pool had no free connection in time)."""


class EmbeddedPostgresError(DropwatchError):
    """The embedded PostgreSQL server could not be started."""
