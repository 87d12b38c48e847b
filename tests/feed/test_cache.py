"""The answer cache on its own: freshness, invalidation, the byte bound."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from services.feed.cache import AnswerCache, key_bytes


def test_fresh_answers_are_served_until_ttl_or_invalidation() -> None:
    cache = AnswerCache(0.2, CollectorRegistry())
    gen = cache.generation()
    cache.put("k", b"answer", gen, time.monotonic())
    assert cache.get("StillOpen", "k") == b"answer"
    assert cache.get("StillOpen", "other") is None
    cache.invalidate()
    assert cache.get("StillOpen", "k") is None
    cache.put("k", b"answer", cache.generation(), time.monotonic() - 0.25)  # built 0.25 s ago
    assert cache.get("StillOpen", "k") is None  # older than the TTL


def test_an_answer_built_across_an_invalidation_is_not_kept() -> None:
    cache = AnswerCache(2.0, CollectorRegistry())
    gen = cache.generation()
    cache.invalidate()  # a poll committed while the answer was being built
    cache.put("k", b"stale", gen, time.monotonic())
    assert cache.get("JustOpened", "k") is None


def test_zero_ttl_disables_and_the_byte_bound_evicts_least_recent() -> None:
    off = AnswerCache(0.0, CollectorRegistry())
    off.put("k", b"x", off.generation(), time.monotonic())
    assert off.get("JustOpened", "k") is None
    # Room for two entries of a one-letter key and four bytes, not three (keys count too).
    cache = AnswerCache(2.0, CollectorRegistry(), max_bytes=2 * (key_bytes("a") + 4) + 2)
    now = time.monotonic()
    cache.put("a", b"aaaa", 0, now)
    cache.put("b", b"bbbb", 0, now)
    assert cache.get("JustOpened", "a") == b"aaaa"  # a is now the most recent
    cache.put("c", b"cccc", 0, now)
    assert cache.get("JustOpened", "b") is None
    assert cache.get("JustOpened", "a") == b"aaaa" and cache.get("JustOpened", "c") == b"cccc"


def test_forgetting_answers_is_not_an_invalidation() -> None:
    """A new boundary drops the answers of the old one; answers being built stay storable."""
    cache = AnswerCache(2.0, CollectorRegistry())
    gen = cache.generation()
    cache.put("old", b"answer", gen, time.monotonic())
    cache.forget()
    assert cache.get("JustOpened", "old") is None
    assert cache.generation() == gen
    cache.put("new", b"answer", gen, time.monotonic())
    assert cache.get("JustOpened", "new") == b"answer"
