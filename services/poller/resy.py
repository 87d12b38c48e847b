"""The Resy provider: one bucket is a paged venue search per party size, through httpx.

`resy_http.py` sends each search (budget, deadline, retries, capped body, status mapping);
`resy_parse.py` reads the answer. This module walks the party sizes and pages and keeps the
slots inside the bucket, under the fetch's limits (pages, hits per page, slots per venue).
"""

from __future__ import annotations

from typing import Any

import httpx

from services.poller.budget import Budget
from services.poller.errors import (
    IncompleteFetchError,
    MalformedResponseError,
    TooManyHitsError,
    TooManySlotsError,
)
from services.poller.provider import BucketSpec
from services.poller.resy_http import RequestObserver, SearchClient
from services.poller.resy_parse import parse_page, parse_slot, parse_venue, slots_of
from services.poller.settings import PollerSettings
from services.poller.slots import BucketFetch, Slot
from shared.slots import slot_id_for


class ResyProvider:
    """Fetches one bucket: every party size, the anchor time filter, every page."""

    name = "resy"

    def __init__(
        self,
        settings: PollerSettings,
        budget: Budget,
        observe: RequestObserver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._client = SearchClient(settings, budget, observe, transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch_bucket(self, spec: BucketSpec, deadline: float) -> BucketFetch:
        result = BucketFetch()
        for party_size in spec.party_sizes:
            result.kind_counts.setdefault(party_size, 0)
            page, total_pages = 1, 1
            while page <= total_pages:
                body = await self._search(spec, party_size, page, deadline)
                result.requests += 1
                hits, total_pages = parse_page(body, page)
                if total_pages > self._settings.max_pages:
                    raise IncompleteFetchError(
                        f"{total_pages} pages exceed the limit of {self._settings.max_pages}"
                    )
                if len(hits) > self._settings.max_hits_per_page:
                    raise TooManyHitsError(
                        f"{len(hits)} hits on a page exceed {self._settings.max_hits_per_page}"
                    )
                for hit in hits:
                    try:
                        self._collect(hit, spec, party_size, result)
                    except (TypeError, ValueError, OverflowError, AttributeError):
                        # Valid JSON, invalid data: the fetch is malformed, never partial.
                        raise MalformedResponseError("a venue hit holds invalid data") from None
                page += 1
        return result

    def _collect(
        self, hit: dict[str, Any], spec: BucketSpec, party_size: int, result: BucketFetch
    ) -> None:
        venue = parse_venue(hit)
        result.venues[venue.venue_id] = venue
        raw_slots = slots_of(hit)
        if len(raw_slots) > self._settings.max_slots_per_venue:
            raise TooManySlotsError(
                f"venue {venue.venue_id}: {len(raw_slots)} slots exceed "
                f"{self._settings.max_slots_per_venue}"
            )
        for raw in raw_slots:
            start, seating = parse_slot(raw, self._settings.zone)
            if not spec.contains(start):
                continue
            slot_id = slot_id_for(self.name, venue.venue_id, start, seating)
            result.add(Slot(slot_id, venue.venue_id, start, seating), party_size)

    async def _search(self, spec: BucketSpec, party_size: int, page: int, deadline: float) -> Any:
        payload = {
            "query": "",
            "types": ["venue"],
            "availability": True,
            "order_by": "availability",
            "page": page,
            "per_page": self._settings.per_page,
            "geo": {"bounding_box": list(self._settings.market_bbox)},
            "slot_filter": {
                "day": spec.day.isoformat(),
                "party_size": party_size,
                "time_filter": spec.anchor.strftime("%H:%M"),
            },
        }
        return await self._client.search(payload, deadline, f"{spec.bucket_id} page {page}")
