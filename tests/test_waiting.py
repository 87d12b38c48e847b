"""The bounded waits: they return as soon as the condition holds and name it when it never does."""

from __future__ import annotations

import pytest

from tests.waiting import wait_until, wait_until_async


def test_returns_the_first_truthy_answer() -> None:
    answers = iter([None, 0, "", "ready"])
    assert wait_until(lambda: next(answers), "the third ask") == "ready"


def test_times_out_naming_the_condition_and_its_last_answer() -> None:
    asked: list[str] = []

    def describe() -> str:
        asked.append("described")
        return "a row that never comes"

    with pytest.raises(AssertionError, match=r"0\.05 s waiting for a row that never comes.*0"):
        wait_until(lambda: 0, describe, timeout=0.05)
    assert asked == ["described"]  # only on failure, so it can read a log written meanwhile


async def test_async_variant_lets_the_loop_run_while_it_waits() -> None:
    seen: list[int] = []

    async def third() -> bool:
        seen.append(1)
        return len(seen) >= 3

    assert await wait_until_async(third, "three asks") is True
    with pytest.raises(AssertionError, match="waiting for nothing"):
        await wait_until_async(_never, "nothing", timeout=0.05)


async def _never() -> None:
    return None
