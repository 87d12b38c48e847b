"""The feed client's tests call a real feed: reuse the feed tests' server and seeder fixtures."""

from tests.feed.conftest import feed, seeder  # noqa: F401 (fixtures, found by name)
