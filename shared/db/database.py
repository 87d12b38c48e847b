"""Find the database a process should use: the configured URL, or the embedded server."""

from __future__ import annotations

from dataclasses import dataclass

from shared.db import embedded
from shared.settings import Settings


@dataclass
class Database:
    """A libpq URL plus the embedded server behind it, if this process started one."""

    url: str
    server: embedded.EmbeddedServer | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def open_database(settings: Settings) -> Database:
    """Use `DROPWATCH_DATABASE_URL` when set; otherwise start embedded PostgreSQL."""
    if settings.database_url is not None:
        return Database(url=settings.database_url.get_secret_value())
    server = embedded.start(settings.data_dir / "pgdata")
    return Database(url=server.url, server=server)
