"""A hostile Resy on loopback: a real HTTP server (standard library) that answers whatever a
test scripts: bombs, trickles, oversized or invalid records.

Each test sets `HostileResy.answer` to a function of the handler; the server runs in a thread
and stops at the end of the test, ending any answer still in progress.
"""

from __future__ import annotations

import contextlib
import json
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[["_Handler"], None]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.hostile.requests += 1
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
            self.server.hostile.answer(self)

    def send_body(self, body: bytes, *, status: int = 200, gzipped: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, document: Any) -> None:
        self.send_body(json.dumps(document).encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hostile: HostileResy


class HostileResy:
    """The server's state: the scripted answer, a stop signal, how many requests came."""

    def __init__(self) -> None:
        self.answer: Answer = lambda handler: handler.send_json(page([]))
        self.stopping = threading.Event()
        self.requests = 0
        self.base_url = ""


@contextmanager
def hostile_resy() -> Iterator[HostileResy]:
    hostile = HostileResy()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.hostile = hostile
    hostile.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hostile
    finally:
        hostile.stopping.set()
        server.shutdown()
        server.server_close()


def page(hits: list[dict[str, Any]]) -> dict[str, Any]:
    return {"search": {"hits": hits, "nbHits": len(hits)}, "meta": {"total_pages": 1}}


def hit(venue: Any, name: Any = "Venue", slots: int = 1, **extra: Any) -> dict[str, Any]:
    times = [f"2026-12-01 19:{minute % 60:02d}:00" for minute in range(slots)]
    raw = [{"date": {"start": t}, "config": {"type": "Dining Room"}} for t in times]
    return {"id": {"resy": venue}, "name": name, "availability": {"slots": raw}, **extra}


def gzip_bomb(inflated: int) -> bytes:
    """A gzip body of `inflated` spaces (valid JSON padding): about a thousandth of the size."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b" " * (1 << 20)
    parts = [packer.compress(block) for _ in range(inflated >> 20)]
    parts.append(packer.flush())
    return b"".join(parts)
