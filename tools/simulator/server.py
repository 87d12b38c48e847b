"""The simulator: Resy's venue-search endpoint plus a small control API.

`Simulator` turns a request (method, path, headers, body) into a `Response` without touching
sockets (search.py reads the body and writes the answer), and transport.py carries it over
HTTP/1.1 keep-alive. Checks run in the order real Resy appears to apply them: API key (401),
browser headers (412), body (400), then any planned fault, then the answer.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any

from tools.simulator import faults as fk
from tools.simulator.catalog import ScriptedSlot, ScriptedVenue
from tools.simulator.dropworld import DEFAULT_ZONE, DropWorld
from tools.simulator.faults import Fault, FaultPlan
from tools.simulator.model import AvailabilityModel, VenueAvailability, scripted_search
from tools.simulator.search import (
    START_FORMATS,
    BadRequest,
    SearchQuery,
    parse_search,
    render_search,
)
from tools.simulator.transport import Handler, HTTPServer, Response, error_response, json_response
from tools.simulator.world import World

__all__ = ["Response", "ScriptedSlot", "ScriptedVenue", "Simulator"]

HASH_MODEL = "hash"  # model.py: stateless open/closed periods (the tests' default)
DROPS_MODEL = "drops"  # dropworld.py: releases, cancellations, ground truth (`make run`)
MODELS = (HASH_MODEL, DROPS_MODEL)

log = logging.getLogger("dropwatch.simulator")

SEARCH_PATH = "/3/venuesearch/search"
FAULTS_PATH = "/_sim/faults"
HEALTH_PATH = "/_sim/health"

REQUEST_LOG_SIZE = 1000
# How often the accept loop checks for stop(): the upper bound on how long stop() waits.
SHUTDOWN_POLL_S = 0.01

_AUTH = re.compile(r'^ResyAPI\s+api_key="([^"]*)"$', re.IGNORECASE)

CHALLENGE_PAGE = (
    "<!DOCTYPE html><html><head><title>Access to this page has been denied</title></head>"
    '<body><div id="px-captcha"></div><p>Please verify you are a human: press and hold to '
    "complete the challenge.</p><script>window._pxAppId='PXsimulator';"
    "window._pxCaptcha=true;</script></body></html>"
)
MALFORMED_BODY = '{"search": {"hits": [{"id": {"resy": 1}, "name": "Trunc'


class Simulator:
    """A Resy venue-search stand-in: the model, scripted days, faults and an HTTP server.

    With `model="drops"` searches are answered by a DropWorld (`self.drops`) at the virtual
    instant `start_at + (clock() - clock at construction) * speed` (`virtual_now()`);
    `start_at` defaults to the clock at construction, so at speed 1 virtual time is the clock.
    """

    def __init__(
        self,
        venues: int = 300,
        seed: int = 7,
        api_key: str | None = None,
        speed: float = 1.0,
        clock: Callable[[], datetime] | None = None,
        world: World | None = None,
        model: str = HASH_MODEL,
        start_at: datetime | None = None,
        market_zone: str = DEFAULT_ZONE,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}")
        self.model = AvailabilityModel(venues, seed, speed)
        self.faults = FaultPlan()
        self._api_key = api_key
        self._clock = clock or (lambda: datetime.now(UTC))
        self._wall0 = self._clock()
        self._start_at = start_at or self._wall0
        self.drops = (
            DropWorld(seed, market_zone=market_zone, venues=self.model.venues)
            if model == DROPS_MODEL
            else None
        )
        # A seeded database's world (see world.py) replaces the model's venues when it has
        # venues of its own; what it carries of the model's venues is the model's to decide.
        carried = world.without({v.venue_id for v in self.model.venues}) if world else None
        self.world = carried if carried is not None and carried.venues else None
        if self.world is not None:
            self.world.started = self.model.sim_seconds(self._clock())
        self._lock = threading.Lock()
        self._scripted: dict[date, tuple[ScriptedVenue, ...]] = {}
        self._request_count = 0
        self._requests: deque[Any] = deque(maxlen=REQUEST_LOG_SIZE)
        self._stopping = threading.Event()
        self._server: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        # Never show the API key.
        return (
            f"Simulator(venues={len(self.model.venues)}, seed={self.model.seed}, url={self._url()})"
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 picks a free port) in a background thread; the base URL."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._stopping.clear()
        server = HTTPServer((host, port), Handler, self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_S},
            name="resy-simulator",
        )
        self._thread.daemon = True
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop listening, cut open keep-alive connections and join every server thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a latency fault
        server.shutdown()  # serve_forever returns: no new connections are accepted
        server.server_close()
        server.close_connections()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Simulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        url = self._url()
        if url is None:
            raise RuntimeError("simulator not started")
        return url

    def _url(self) -> str | None:
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- scripting and introspection -------------------------------------------------------

    def virtual_now(self) -> datetime:
        """The instant the drops model is asked about (the clock itself for the hash model)."""
        now = self._clock()
        if self.drops is None:
            return now
        return self._start_at + (now - self._wall0) * self.model.speed

    def script_day(self, day: date, venues: list[ScriptedVenue]) -> None:
        """From now on, searches for `day` return exactly these venues and slots."""
        with self._lock:
            self._scripted[day] = tuple(venues)

    def unscript_day(self, day: date) -> None:
        with self._lock:
            self._scripted.pop(day, None)

    @property
    def request_count(self) -> int:
        """Search requests received, whatever their answer."""
        with self._lock:
            return self._request_count

    @property
    def requests(self) -> list[Any]:
        """The last JSON bodies received by the search endpoint, oldest first."""
        with self._lock:
            return list(self._requests)

    # -- request handling ------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Route one request; `headers` has lower-case names."""
        path = path.split("?", 1)[0]
        routes: dict[str, dict[str, Callable[[], Response]]] = {
            SEARCH_PATH: {"POST": lambda: self._search(headers, body)},
            FAULTS_PATH: {
                "POST": lambda: self._add_fault(body),
                "DELETE": self._clear_faults,
                "GET": lambda: json_response(200, {"ok": True, **self.faults.snapshot()}),
            },
            HEALTH_PATH: {
                "GET": lambda: json_response(200, {"ok": True, "venues": len(self.model.venues)})
            },
        }
        if path not in routes:
            return error_response(404, "Not Found")
        handler = routes[path].get(method)
        if handler is None:
            return error_response(405, "Method Not Allowed")
        return handler()

    def _search(self, headers: Mapping[str, str], raw: bytes) -> Response:
        """Count and log the request, reject it like Resy would, apply a fault, or answer."""
        try:
            body, valid_json = json.loads(raw or b"null"), True
        except ValueError:
            body, valid_json = None, False
        with self._lock:
            self._request_count += 1
            number = self._request_count
            if valid_json:
                self._requests.append(body)
        rejected = self._check_headers(headers)
        if rejected is not None:
            return rejected
        if not valid_json:
            return error_response(400, "body must be JSON")
        try:
            query = parse_search(body)
        except BadRequest as exc:
            return error_response(400, str(exc))
        fault = self.faults.take(query.facts())
        if fault is not None and fault.kind == fk.LATENCY:
            self._stopping.wait(fault.delay)
            fault = None
        if fault is not None and fault.kind != fk.MISSING_PAGE:
            return self._fault_response(fault, query)
        fmt = START_FORMATS[(self.model.seed + number) % len(START_FORMATS)]
        payload = render_search(query, self._results(query), fmt, drop_page=fault is not None)
        return json_response(200, payload)

    def _check_headers(self, headers: Mapping[str, str]) -> Response | None:
        if self._api_key is not None:
            match = _AUTH.match(headers.get("authorization", "").strip())
            if match is None or match.group(1) != self._api_key:
                return json_response(401, {"message": "Unauthorized"})
        if not headers.get("user-agent", "").strip():
            return error_response(412, "Precondition Failed: User-Agent required")
        if not (headers.get("origin", "").strip() or headers.get("referer", "").strip()):
            return error_response(412, "Precondition Failed: Origin or Referer required")
        return None

    def _results(self, query: SearchQuery) -> tuple[VenueAvailability, ...]:
        with self._lock:
            scripted = self._scripted.get(query.day)
        now = self._clock()
        if scripted is None:
            if self.world is None and self.drops is not None:
                at = self.virtual_now()
                return self.drops.search_venues(query.day, query.party_size, query.window, at)
            if self.world is None:
                return self.model.search(query.day, query.party_size, query.window, now)
            t = self.model.sim_seconds(now)
            return self.world.search(query.day, query.party_size, query.window, t)
        seed, speed = self.model.seed, self.model.speed
        return scripted_search(
            seed, speed, scripted, query.day, query.party_size, query.window, now
        )

    def _fault_response(self, fault: Fault, query: SearchQuery) -> Response:
        if fault.kind == fk.RATE_LIMIT:
            return Response(
                429,
                json.dumps({"status": 429, "message": "Too Many Requests"}).encode(),
                headers={"Retry-After": fault.retry_after_header},
            )
        if fault.kind == fk.SERVER_ERROR:
            return error_response(500, "Internal Server Error")
        if fault.kind == fk.CHALLENGE:
            return Response(403, CHALLENGE_PAGE.encode(), content_type="text/html; charset=utf-8")
        if fault.kind == fk.AUTH:
            return json_response(401, {"message": "Unauthorized"})
        if fault.kind == fk.MALFORMED:
            return Response(200, MALFORMED_BODY.encode())
        if fault.kind == fk.DRIFTED:
            return json_response(
                200, {"search": {"results": [], "count": 0}, "meta": {"page": query.page}}
            )
        if fault.kind == fk.EMPTY:
            meta = {"page": query.page, "per_page": query.per_page, "total_pages": 0}
            return json_response(200, {"search": {"hits": [], "nbHits": 0}, "meta": meta})
        raise AssertionError(f"unhandled fault kind {fault.kind}")

    def _add_fault(self, raw: bytes) -> Response:
        try:
            spec = json.loads(raw or b"null")
            if not isinstance(spec, dict):
                raise ValueError("body must be a JSON object")
            options = {
                "match": spec.get("match"),
                "retry_after": spec.get("retry_after"),
                "delay_s": spec.get("delay_s"),
            }
            if spec.get("default"):
                self.faults.set_default(spec.get("kind"), **options)
            else:
                self.faults.add(str(spec.get("kind")), count=int(spec.get("count", 1)), **options)
        except (ValueError, TypeError) as exc:
            return error_response(400, str(exc))
        return json_response(200, {"ok": True, **self.faults.snapshot()})

    def _clear_faults(self) -> Response:
        self.faults.clear()
        return json_response(200, {"ok": True})
