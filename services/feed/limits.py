"""Server-side limits of the feed, in one place (documented in feed.proto and the README)."""

from __future__ import annotations

JUST_OPENED_DEFAULT_LIMIT = 500
JUST_OPENED_MAX_LIMIT = 2_000
STILL_OPEN_DEFAULT_LIMIT = 1_000
STILL_OPEN_MAX_LIMIT = 10_000

DEFAULT_MAX_AGE_SECONDS = 600  # JustOpened's window, and where StillOpen starts by default
MAX_MAX_AGE_SECONDS = 3_600

MAX_FILTER_VALUES = 100
MIN_PARTY_SIZE, MAX_PARTY_SIZE = 1, 20

LIST_CHANGES_DEFAULT_LIMIT = 500
LIST_CHANGES_MAX_LIMIT = 2_000
