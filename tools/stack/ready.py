"""`up` says "ready" only when every service answers its own health check.

A listening port is not enough: it may belong to another program, or to a service that is
still starting. The simulator answers `GET /_sim/health`, the poller and the feed answer the
standard gRPC health check, and both serve `/metrics`.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.errors import DropwatchError
from tools.stack.children import Stack

# None when the check passed, else what it saw instead.
Probe = Callable[[], str | None]


@dataclass(frozen=True)
class Check:
    service: str
    what: str
    probe: Probe


def http_ok(url: str) -> Probe:
    def probe() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            return str(getattr(exc, "reason", exc))

    return probe


def grpc_serving(address: str) -> Probe:
    def probe() -> str | None:
        try:
            with grpc.insecure_channel(address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.RpcError as exc:
            return exc.code().name if hasattr(exc, "code") else str(exc)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        return None

    return probe


def wait_ready(
    checks: list[Check], stack: Stack, stop: threading.Event, timeout: float = 60
) -> bool:
    """Wait until every check passes (True) or `stop` is set (False); a child that exits or a
    check that never passes stops the start with an error that names the service."""
    deadline = time.monotonic() + timeout
    pending = list(checks)
    while not stop.is_set():
        stack.check()
        pending = [c for c in pending if c.probe() is not None]
        if not pending:
            return True
        if time.monotonic() > deadline:
            first = pending[0]
            raise DropwatchError(
                f"{first.service} did not answer its health check ({first.what}: "
                f"{first.probe()}) within {timeout:.0f}s"
            )
        stop.wait(0.2)
    return False
