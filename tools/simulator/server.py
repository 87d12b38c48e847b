"""The simulator's HTTP side: Resy's venue-search endpoint plus a small control API.

`Simulator` turns a request (method, path, headers, body) into a `Response` without touching
sockets, and a stdlib `ThreadingHTTPServer` carries it over HTTP/1.1 keep-alive. Checks run in
the order real Resy appears to apply them: API key (401), browser headers (412), body (400),
then any planned fault, then the answer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeGuard

from tools.simulator import faults as fk
from tools.simulator.faults import Fault, FaultPlan
from tools.simulator.model import (
    DEFAULT_BBOX,
    AvailabilityModel,
    BoundingBox,
    ScriptedSlot,
    ScriptedVenue,
    Slot,
    TimeWindow,
    VenueAvailability,
    parse_hhmm,
    scripted_search,
)

__all__ = ["Response", "ScriptedSlot", "ScriptedVenue", "Simulator"]

log = logging.getLogger("dropwatch.simulator")

SEARCH_PATH = "/3/venuesearch/search"
FAULTS_PATH = "/_sim/faults"
HEALTH_PATH = "/_sim/health"

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 200
MAX_PARTY_SIZE = 20
MAX_BODY_BYTES = 1 << 20
REQUEST_LOG_SIZE = 1000
# How often the accept loop checks for stop(): the upper bound on how long stop() waits.
SHUTDOWN_POLL_S = 0.01
# The box searched around a {"latitude", "longitude"} point, in degrees.
POINT_BOX_HALF_SPAN = (0.05, 0.06)

# Resy's date strings drift; a client must normalise all of these to the same start time:
# "2026-12-03 19:30:00", "2026-12-03T19:30:00", "2026-12-03 19:30" (d = YYYY-MM-DD).
START_FORMATS = ("{d} {h:02d}:{m:02d}:00", "{d}T{h:02d}:{m:02d}:00", "{d} {h:02d}:{m:02d}")

_AUTH = re.compile(r'^ResyAPI\s+api_key="([^"]*)"$', re.IGNORECASE)
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")

CHALLENGE_PAGE = (
    "<!DOCTYPE html><html><head><title>Access to this page has been denied</title></head>"
    '<body><div id="px-captcha"></div><p>Please verify you are a human: press and hold to '
    "complete the challenge.</p><script>window._pxAppId='PXsimulator';"
    "window._pxCaptcha=true;</script></body></html>"
)
MALFORMED_BODY = '{"search": {"hits": [{"id": {"resy": 1}, "name": "Trunc'


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, headers=dict(headers or {}))


def _error(status: int, message: str) -> Response:
    return _json(status, {"status": status, "message": message})


class BadRequest(ValueError):
    """A search body the real API would reject with 400."""


@dataclass(frozen=True)
class SearchQuery:
    day: date
    party_size: int
    time_filter: str | None
    page: int
    per_page: int
    bbox: BoundingBox

    @property
    def window(self) -> TimeWindow:
        return TimeWindow.around(self.time_filter)

    def facts(self) -> dict[str, Any]:
        """What a fault's `match` can test."""
        return {
            "page": self.page,
            "per_page": self.per_page,
            "day": self.day.isoformat(),
            "party_size": self.party_size,
            "time_filter": self.time_filter,
        }


def _int_field(body: Mapping[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{name} must be a positive integer")
    return value


def _parse_bbox(geo: Any) -> BoundingBox:
    if geo is None:
        return DEFAULT_BBOX
    if not isinstance(geo, dict):
        raise BadRequest("geo must be an object")
    if "bounding_box" in geo:
        box = geo["bounding_box"]
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise BadRequest("geo.bounding_box must be [south, west, north, east]")
        south, west, north, east = (float(v) for v in box)
        if not (south < north and west < east):
            raise BadRequest("geo.bounding_box must have south < north and west < east")
        return BoundingBox(south, west, north, east)
    lat, lng = geo.get("latitude"), geo.get("longitude")
    if _is_number(lat) and _is_number(lng):
        d_lat, d_lng = POINT_BOX_HALF_SPAN
        return BoundingBox(
            float(lat) - d_lat, float(lng) - d_lng, float(lat) + d_lat, float(lng) + d_lng
        )
    raise BadRequest("geo needs bounding_box or latitude and longitude")


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_search(body: Any) -> SearchQuery:
    """Validate a search body the way the endpoint needs it; BadRequest says what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    slot_filter = body.get("slot_filter")
    if not isinstance(slot_filter, dict):
        raise BadRequest("slot_filter is required")
    return SearchQuery(
        day=_parse_day(slot_filter.get("day")),
        party_size=_parse_party_size(slot_filter.get("party_size")),
        time_filter=_parse_time_filter(slot_filter.get("time_filter")),
        page=_int_field(body, "page", 1),
        per_page=min(_int_field(body, "per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE),
        bbox=_parse_bbox(body.get("geo")),
    )


def _parse_day(value: Any) -> date:
    if isinstance(value, str) and _DAY.match(value):
        with contextlib.suppress(ValueError):
            return date.fromisoformat(value)
    raise BadRequest("slot_filter.day must be YYYY-MM-DD")


def _parse_party_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("slot_filter.party_size must be an integer")
    if not 1 <= value <= MAX_PARTY_SIZE:
        raise BadRequest(f"slot_filter.party_size must be 1..{MAX_PARTY_SIZE}")
    return value


def _parse_time_filter(value: Any) -> str | None:
    """HH:MM, or None for the whole day."""
    if value is None:
        return None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parse_hhmm(value)
            return value
    raise BadRequest("slot_filter.time_filter must be HH:MM")


def _stamp(fmt: str, day: date, minute: int) -> str:
    """A venue-local date-time string; minute may run past midnight (a late slot's end)."""
    if minute >= 24 * 60:
        day, minute = day + timedelta(days=minute // (24 * 60)), minute % (24 * 60)
    return fmt.format(d=day.isoformat(), h=minute // 60, m=minute % 60)


def _render_slot(slot: Slot, fmt: str) -> dict[str, Any]:
    day = slot.day.isoformat()
    service = slot.service_type_id
    token = (
        f"rgs://resy/{slot.venue_id}/{slot.template_id}/{service}/{day}/{day}/"
        f"{slot.minute // 60:02d}:{slot.minute % 60:02d}:00/{slot.party_size}/{slot.seating_type}"
    )
    end_minute = slot.minute + slot.duration_minutes
    return {
        "config": {"id": slot.config_id, "type": slot.seating_type, "token": token},
        "date": {
            "start": _stamp(fmt, slot.day, slot.minute),
            "end": _stamp(fmt, slot.day, end_minute),
        },
        "shift": {"service": {"type": {"id": service}}, "day": day},
        "template": {"id": slot.template_id},
        "payment": {"is_paid": False, "cancellation_fee": None, "deposit_fee": None},
    }


def _render_hit(found: VenueAvailability, bbox: BoundingBox, fmt: str) -> dict[str, Any]:
    venue = found.venue
    lat, lng = bbox.point(venue.lat_frac, venue.lng_frac)
    return {
        "id": {"resy": venue.venue_id},
        "name": venue.name,
        "url_slug": venue.url_slug,
        "location": {"code": "ny"},
        "neighborhood": venue.neighborhood,
        "price_range_id": venue.price_range_id,
        "_geoloc": {"lat": lat, "lng": lng},
        "min_party_size": venue.min_party_size,
        "max_party_size": venue.max_party_size,
        "availability": {"slots": [_render_slot(s, fmt) for s in found.slots]},
    }


def _render_search(
    query: SearchQuery, results: tuple[VenueAvailability, ...], fmt: str, *, drop_page: bool
) -> dict[str, Any]:
    """One page of results; drop_page keeps the totals but omits the hits (missing_page)."""
    total = len(results)
    first = (query.page - 1) * query.per_page
    page = () if drop_page else results[first : first + query.per_page]
    return {
        "search": {"hits": [_render_hit(r, query.bbox, fmt) for r in page], "nbHits": total},
        "meta": {
            "page": query.page,
            "per_page": query.per_page,
            "total_pages": math.ceil(total / query.per_page),
        },
    }


class Simulator:
    """A Resy venue-search stand-in: the model, scripted days, faults and an HTTP server."""

    def __init__(
        self,
        venues: int = 300,
        seed: int = 7,
        api_key: str | None = None,
        speed: float = 1.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.model = AvailabilityModel(venues, seed, speed)
        self.faults = FaultPlan()
        self._api_key = api_key
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._scripted: dict[date, tuple[ScriptedVenue, ...]] = {}
        self._request_count = 0
        self._requests: deque[Any] = deque(maxlen=REQUEST_LOG_SIZE)
        self._stopping = threading.Event()
        self._server: _HTTPServer | None = None
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
        server = _HTTPServer((host, port), _Handler, self)
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
                "GET": lambda: _json(200, {"ok": True, **self.faults.snapshot()}),
            },
            HEALTH_PATH: {
                "GET": lambda: _json(200, {"ok": True, "venues": len(self.model.venues)})
            },
        }
        if path not in routes:
            return _error(404, "Not Found")
        handler = routes[path].get(method)
        if handler is None:
            return _error(405, "Method Not Allowed")
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
            return _error(400, "body must be JSON")
        try:
            query = parse_search(body)
        except BadRequest as exc:
            return _error(400, str(exc))
        fault = self.faults.take(query.facts())
        if fault is not None and fault.kind == fk.LATENCY:
            self._stopping.wait(fault.delay)
            fault = None
        if fault is not None and fault.kind != fk.MISSING_PAGE:
            return self._fault_response(fault, query)
        fmt = START_FORMATS[(self.model.seed + number) % len(START_FORMATS)]
        payload = _render_search(query, self._results(query), fmt, drop_page=fault is not None)
        return _json(200, payload)

    def _check_headers(self, headers: Mapping[str, str]) -> Response | None:
        if self._api_key is not None:
            match = _AUTH.match(headers.get("authorization", "").strip())
            if match is None or match.group(1) != self._api_key:
                return _json(401, {"message": "Unauthorized"})
        if not headers.get("user-agent", "").strip():
            return _error(412, "Precondition Failed: User-Agent required")
        if not (headers.get("origin", "").strip() or headers.get("referer", "").strip()):
            return _error(412, "Precondition Failed: Origin or Referer required")
        return None

    def _results(self, query: SearchQuery) -> tuple[VenueAvailability, ...]:
        with self._lock:
            scripted = self._scripted.get(query.day)
        now = self._clock()
        if scripted is None:
            return self.model.search(query.day, query.party_size, query.window, now)
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
            return _error(500, "Internal Server Error")
        if fault.kind == fk.CHALLENGE:
            return Response(403, CHALLENGE_PAGE.encode(), content_type="text/html; charset=utf-8")
        if fault.kind == fk.AUTH:
            return _json(401, {"message": "Unauthorized"})
        if fault.kind == fk.MALFORMED:
            return Response(200, MALFORMED_BODY.encode())
        if fault.kind == fk.DRIFTED:
            return _json(200, {"search": {"results": [], "count": 0}, "meta": {"page": query.page}})
        if fault.kind == fk.EMPTY:
            meta = {"page": query.page, "per_page": query.per_page, "total_pages": 0}
            return _json(200, {"search": {"hits": [], "nbHits": 0}, "meta": meta})
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
            return _error(400, str(exc))
        return _json(200, {"ok": True, **self.faults.snapshot()})

    def _clear_faults(self) -> Response:
        self.faults.clear()
        return _json(200, {"ok": True})


class _HTTPServer(ThreadingHTTPServer):
    """Tracks each connection and its thread, so stop() can cut idle keep-alives and then
    join every handler instead of leaving them to the interpreter."""

    daemon_threads = True  # a forgotten stop() must not keep the process alive

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], simulator: Simulator
    ) -> None:
        self.simulator = simulator
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Registered here, in the serving thread, so once serve_forever has returned no
        # connection can appear that close_connections() would miss.
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="resy-simulator-connection",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[request] = thread
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(request, None)

    def close_connections(self, timeout: float = 5.0) -> None:
        """Shut every open connection down and wait for its handler thread to finish."""
        with self._connections_lock:
            connections = list(self._connections.items())
        for conn, _ in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _, thread in connections:
            thread.join(timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            # A client hanging up, or stop() cutting a connection: normal.
            log.debug("connection from %s ended: %s", client_address, sys.exc_info()[1])
        else:
            log.exception("simulator connection from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API behind its CDN
    server_version = "ResySimulator/1"
    timeout = 60  # idle keep-alive connections give their thread back
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stall
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._send(_error(413 if length > 0 else 400, "bad Content-Length"))
            self.close_connection = True  # the unread body would corrupt the next request
            return
        body = self.rfile.read(length) if length > 0 else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            response = self.server.simulator.handle(self.command, self.path, headers, body)
        except Exception:
            log.exception("simulator failed on %s %s", self.command, self.path)
            response = _error(500, "simulator bug")
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)
