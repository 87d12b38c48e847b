"""Why a fetch from the provider failed. Each carries the `reason` label used in metrics."""

from __future__ import annotations

from shared.errors import DropwatchError


class FetchError(DropwatchError):
    """The provider did not give a complete, well-formed answer; the poll must change nothing."""

    reason = "error"
    retryable = False


class AuthExpiredError(FetchError):
    """401, or a plain 403: the API key or user token is no longer accepted."""

    reason = "auth"


class BlockedError(FetchError):
    """403 with a captcha/challenge body: an anti-bot block."""

    reason = "blocked"


class RateLimitedError(FetchError):
    """429; `retry_after` is the server's Retry-After in seconds, if it sent one."""

    reason = "rate_limited"
    retryable = True

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamServerError(FetchError):
    """5xx or 412 (412/500 usually mean Resy changed a header requirement)."""

    reason = "server_error"
    retryable = True


class UpstreamTimeoutError(FetchError):
    """The request (or the whole poll's deadline) ran out of time."""

    reason = "timeout"
    retryable = True


class TransportError(FetchError):
    """The connection failed (refused, reset, DNS)."""

    reason = "transport"
    retryable = True


class MalformedResponseError(FetchError):
    """The body was not JSON, or its shape drifted from what we know."""

    reason = "malformed"


class IncompleteFetchError(FetchError):
    """A page was missing or there were more pages than we may read."""

    reason = "incomplete"


class ExcessError(FetchError):
    """The provider sent more than any real answer holds; taking part of it would be a partial
    fetch, so the whole fetch is unhealthy. Each subclass names the limit in its reason."""

    reason = "excess"


class BodyTooLargeError(ExcessError):
    """The body, after decompression, is larger than `DROPWATCH_MAX_BODY_BYTES`."""

    reason = "body_too_large"


class TooManyHitsError(ExcessError):
    """A page holds more venues than `DROPWATCH_MAX_HITS_PER_PAGE`."""

    reason = "too_many_hits"


class TooManySlotsError(ExcessError):
    """A venue holds more slots than `DROPWATCH_MAX_SLOTS_PER_VENUE`."""

    reason = "too_many_slots"


class UnparseableStartError(MalformedResponseError):
    """A slot's start time is in no format we can read: the whole fetch is unhealthy, since
    leaving that slot out would close it (never a partial diff)."""

    reason = "unparseable_start"
