"""Bounded waits on a condition, never on the clock.

A test that sleeps "long enough" is slow on an idle machine and flaky on a busy one. These
helpers ask the real condition (a row, a query in `pg_stat_activity`, a health answer) again
and again until it holds, and fail with what they were waiting for once `timeout` has passed.
The pause between two asks is short and grows a little, so the wait ends soon after the
condition holds and a slow condition is not asked hundreds of times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT = 30.0
_FIRST_PAUSE = 0.01
_LONGEST_PAUSE = 0.25

Describe = str | Callable[[], str]


def _pauses() -> list[float]:
    """0.01 s, then 1.5x longer each time up to 0.25 s (the last one repeats)."""
    pauses = [_FIRST_PAUSE]
    while pauses[-1] < _LONGEST_PAUSE:
        pauses.append(min(pauses[-1] * 1.5, _LONGEST_PAUSE))
    return pauses


def _timed_out(what: Describe, timeout: float, last: object) -> AssertionError:
    text = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout:g} s waiting for {text} (last: {last!r})")


def wait_until(predicate: Callable[[], T | None], what: Describe, timeout: float = TIMEOUT) -> T:
    """Return the first truthy value of `predicate()`; raise AssertionError after `timeout`.

    `what` names the condition (a callable is asked only on failure, e.g. to attach a log).
    """
    deadline = time.monotonic() + timeout
    pauses = _pauses()
    attempt = 0
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, result)
        time.sleep(pauses[min(attempt, len(pauses) - 1)])
        attempt += 1


async def wait_until_async(
    predicate: Callable[[], Awaitable[T | None]], what: Describe, timeout: float = TIMEOUT
) -> T:
    """`wait_until` for a coroutine predicate; the event loop runs on while it waits."""
    deadline = time.monotonic() + timeout
    pauses = _pauses()
    attempt = 0
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, result)
        await asyncio.sleep(pauses[min(attempt, len(pauses) - 1)])
        attempt += 1
