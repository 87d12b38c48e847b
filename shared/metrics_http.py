"""Serve a service's Prometheus registry on `/metrics` from a background thread.

Every listener of a service binds `DROPWATCH_BIND_HOST`: all interfaces in a pod (probes and
scrapes come from outside), 127.0.0.1 for `make run`, which says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


@dataclass
class MetricsServer:
    port: int
    _server: WSGIServer
    _thread: Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> MetricsServer:
    """Start serving; `port=0` picks a free port, which is logged and returned."""
    server, thread = start_http_server(port, addr=addr, registry=registry)
    actual = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", addr, actual)
    return MetricsServer(port=actual, _server=server, _thread=thread)


def grpc_address(host: str, port: int) -> str:
    """The `host:port` a gRPC server binds (an IPv6 literal in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
