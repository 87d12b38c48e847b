"""The simulator over HTTP/1.1: a stdlib threading server with keep-alive, whose stop() cuts
idle connections and joins every handler thread."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tools.simulator.server import Simulator

log = logging.getLogger("dropwatch.simulator")

MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, headers=dict(headers or {}))


def error_response(status: int, message: str) -> Response:
    return json_response(status, {"status": status, "message": message})


class HTTPServer(ThreadingHTTPServer):
    """Tracks each connection and its thread, so stop() can cut idle keep-alives and then
    join every handler instead of leaving them to the interpreter."""

    daemon_threads = True  # a forgotten stop() must not keep the process alive

    def __init__(
        self, address: tuple[str, int], handler: type[Handler], simulator: Simulator
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

    def handleerror_response(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            # A client hanging up, or stop() cutting a connection: normal.
            log.debug("connection from %s ended: %s", client_address, sys.exc_info()[1])
        else:
            log.exception("simulator connection from %s failed", client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API behind its CDN
    server_version = "ResySimulator/1"
    timeout = 60  # idle keep-alive connections give their thread back
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stall
    server: HTTPServer

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
            self._send(error_response(413 if length > 0 else 400, "bad Content-Length"))
            self.close_connection = True  # the unread body would corrupt the next request
            return
        body = self.rfile.read(length) if length > 0 else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            response = self.server.simulator.handle(self.command, self.path, headers, body)
        except Exception:
            log.exception("simulator failed on %s %s", self.command, self.path)
            response = error_response(500, "simulator bug")
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
