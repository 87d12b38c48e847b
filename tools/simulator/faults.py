"""The fault plan: failures a test (or a human, over HTTP) asks the simulator to serve.

Real Resy rate-limits, blocks bots with challenges, expires tokens, changes its JSON and
sometimes answers a soft "nothing here". Each of those is a fault kind here. Queued faults
fire once per matching request until their count is used up, in the order they were added;
a default fault fires on every matching request until cleared. All methods are thread-safe
because the HTTP server answers requests on many threads.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LATENCY = "latency"  # sleep delay_s, then answer normally
RATE_LIMIT = "rate_limit"  # 429 with Retry-After
SERVER_ERROR = "server_error"  # 500
CHALLENGE = "challenge"  # 403 with an anti-bot (captcha) page
AUTH = "auth"  # 401, as for an expired token
MALFORMED = "malformed"  # 200 whose body is not JSON
DRIFTED = "drifted"  # 200, valid JSON, but the shape changed (no search.hits)
MISSING_PAGE = "missing_page"  # pages >= 2 only: 200 with no hits, meta still claims them
EMPTY = "empty"  # 200 with zero hits and nbHits 0: a soft block

KINDS = frozenset(
    {LATENCY, RATE_LIMIT, SERVER_ERROR, CHALLENGE, AUTH, MALFORMED, DRIFTED, MISSING_PAGE, EMPTY}
)
# Request facts a fault can be matched on (`SearchQuery.facts` in server.py).
MATCH_KEYS = frozenset({"page", "per_page", "day", "party_size", "time_filter"})

DEFAULT_RETRY_AFTER = 1
DEFAULT_DELAY_S = 1.0


@dataclass(frozen=True)
class Fault:
    kind: str
    match: Mapping[str, Any] = field(default_factory=dict)
    retry_after: int | float | None = None
    delay_s: float | None = None

    def applies_to(self, facts: Mapping[str, Any]) -> bool:
        """Every match key equals the request's value (compared as text, so "4" matches 4)."""
        if self.kind == MISSING_PAGE and int(facts.get("page", 1)) < 2:
            return False
        return all(str(facts.get(k)) == str(v) for k, v in self.match.items())

    @property
    def retry_after_header(self) -> str:
        """Whole seconds as HTTP has them ("7"); a fraction ("0.2") is kept so fast tests
        need not sleep a whole second, and shows a client parses more than integers."""
        value = DEFAULT_RETRY_AFTER if self.retry_after is None else self.retry_after
        return str(int(value)) if float(value).is_integer() else repr(float(value))

    @property
    def delay(self) -> float:
        return DEFAULT_DELAY_S if self.delay_s is None else self.delay_s

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "match": dict(self.match),
            "retry_after": self.retry_after,
            "delay_s": self.delay_s,
        }


def make_fault(
    kind: str,
    *,
    match: Mapping[str, Any] | None = None,
    retry_after: float | None = None,
    delay_s: float | None = None,
) -> Fault:
    """Validate eagerly, so a typo in a test fails at `add`, not as a fault that never fires."""
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(KINDS)}")
    unknown = set(match or {}) - MATCH_KEYS
    if unknown:
        raise ValueError(f"unknown match keys {sorted(unknown)}; expected {sorted(MATCH_KEYS)}")
    if retry_after is not None and retry_after < 0:
        raise ValueError("retry_after must be >= 0")
    if delay_s is not None and delay_s < 0:
        raise ValueError("delay_s must be >= 0")
    return Fault(kind, dict(match or {}), retry_after, delay_s)


@dataclass
class _Queued:
    fault: Fault
    remaining: int


class FaultPlan:
    """Queued faults (each with a remaining count) plus an optional default fault."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: list[_Queued] = []
        self._default: Fault | None = None

    def add(
        self,
        kind: str,
        *,
        count: int = 1,
        match: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
        delay_s: float | None = None,
    ) -> None:
        """Queue a fault for the next `count` matching requests."""
        if count < 1:
            raise ValueError("count must be >= 1")
        fault = make_fault(kind, match=match, retry_after=retry_after, delay_s=delay_s)
        with self._lock:
            self._queued.append(_Queued(fault, count))

    def set_default(
        self,
        kind: str | None,
        *,
        match: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
        delay_s: float | None = None,
    ) -> None:
        """Apply a fault to every matching request until cleared; None removes it."""
        fault = None
        if kind is not None:
            fault = make_fault(kind, match=match, retry_after=retry_after, delay_s=delay_s)
        with self._lock:
            self._default = fault

    def clear(self) -> None:
        """Drop every queued fault and the default."""
        with self._lock:
            self._queued.clear()
            self._default = None

    def take(self, facts: Mapping[str, Any]) -> Fault | None:
        """The fault for this request, consuming one use of a queued fault."""
        with self._lock:
            for entry in self._queued:
                if entry.fault.applies_to(facts):
                    entry.remaining -= 1
                    if entry.remaining <= 0:
                        self._queued.remove(entry)
                    return entry.fault
            if self._default is not None and self._default.applies_to(facts):
                return self._default
            return None

    def pending(self) -> int:
        """Uses left across queued faults (the default does not count)."""
        with self._lock:
            return sum(entry.remaining for entry in self._queued)

    def snapshot(self) -> dict[str, Any]:
        """What is planned, for the control endpoint and for debugging a test."""
        with self._lock:
            queued = [{**q.fault.describe(), "count": q.remaining} for q in self._queued]
            default = self._default.describe() if self._default else None
        return {"queued": queued, "default": default}
