"""Feed errors; `services.feed.servicer` maps each to one gRPC status code, in one place."""

from __future__ import annotations

from shared.errors import DropwatchError


class InvalidArgumentError(DropwatchError):
    """A request field is malformed or out of range; `field` is its path in the request."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
