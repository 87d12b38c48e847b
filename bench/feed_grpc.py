"""The feed benchmark's gRPC side: the feed and a bare echo server as child processes, and the
client that drives them (N coroutines calling back to back on one channel)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.harness import log, percentile
from shared.gen.dropwatch.feed.v1 import feed_pb2

ROOT = Path(__file__).resolve().parents[1]
CALL_TIMEOUT = 30.0
ECHO_SERVICE = "dropwatch.bench.Echo"
FEED_SERVICE = feed_pb2.DESCRIPTOR.services_by_name["FeedService"].full_name
# Echo methods: an empty answer; the feed's cached default answer as a message serialized per
# call (as the feed serves its cache) or as pre-serialized bytes. The client parses the last two.
ECHO = {
    "Empty": "echo, empty response",
    "Message": "echo, the cached answer (message, serialized per call)",
    "Bytes": "echo, the cached answer (pre-serialized bytes)",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    target: str  # host:port of its gRPC server
    log_path: Path
    metrics_port: int = 0

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"{self.proc.args!r} exited {self.proc.returncode}:\n{self.tail()}"
                )
            try:
                async with grpc.aio.insecure_channel(self.target) as channel:
                    await asyncio.wait_for(channel.channel_ready(), timeout=1.0)
                    return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{self.target} not ready:\n{self.tail()}") from None

    def cache_counts(self) -> dict[str, float]:
        """The feed's JustOpened cache counters (hit, miss) from its /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        pattern = r'^dropwatch_feed_cache_requests_total\{result="(\w+)",rpc="JustOpened"\} (\S+)$'
        return {m[1]: float(m[2]) for m in re.finditer(pattern, body, re.M)}


@contextmanager
def child(
    args: list[str], log_path: Path, env: dict[str, str] | None, port: int
) -> Iterator[Child]:
    """A child process, SIGTERM then SIGKILL at the end; always reaped."""
    with log_path.open("wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Child(proc, f"127.0.0.1:{port}", log_path)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def feed_server(url: str, logs: Path, name: str, cache_ttl: float | None) -> Iterator[Child]:
    """`python -m services.feed` on a free port against the benchmark's database."""
    port, metrics = free_port(), free_port()
    env = dict(os.environ, DROPWATCH_DATABASE_URL=url, DROPWATCH_LOG_LEVEL="INFO")
    env["DROPWATCH_PAGE_TOKEN_SECRET"] = "bench-page-token-secret"
    if cache_ttl is not None:  # 0: every request reaches PostgreSQL
        env["DROPWATCH_CACHE_TTL_SECONDS"] = str(cache_ttl)
    args = ["-m", "services.feed", "--port", str(port), "--metrics-port", str(metrics)]
    with child([sys.executable, *args], logs / f"feed-{name}.log", env, port) as feed:
        feed.metrics_port = metrics
        yield feed


@contextmanager
def echo_server(logs: Path, payload: bytes) -> Iterator[Child]:
    port = free_port()
    (logs / "payload.bin").write_bytes(payload)
    code = f"from bench.feed_grpc import serve_echo; serve_echo({port}, {str(logs)!r})"
    with child([sys.executable, "-c", code], logs / "echo.log", None, port) as echo:
        yield echo


def serve_echo(port: int, logs: str) -> None:
    """The echo child: a bare grpc.aio server, generic handlers, no interceptor."""
    payload = (Path(logs) / "payload.bin").read_bytes()
    message = feed_pb2.JustOpenedResponse.FromString(payload)

    async def main() -> None:
        async def empty(request: bytes, context: Any) -> bytes:
            return b""

        async def as_bytes(request: bytes, context: Any) -> bytes:
            return payload

        async def as_message(request: bytes, context: Any) -> feed_pb2.JustOpenedResponse:
            return message

        serialize = feed_pb2.JustOpenedResponse.SerializeToString
        handlers = {
            "Empty": grpc.unary_unary_rpc_method_handler(empty),
            "Bytes": grpc.unary_unary_rpc_method_handler(as_bytes),
            "Message": grpc.unary_unary_rpc_method_handler(as_message, None, serialize),
        }
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(ECHO_SERVICE, handlers),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())


Call = Callable[[], Awaitable[Any]]


def echo_call(channel: grpc.aio.Channel, method: str) -> Call:
    parse = None if method == "Empty" else feed_pb2.JustOpenedResponse.FromString
    stub = channel.unary_unary(f"/{ECHO_SERVICE}/{method}", None, parse)
    return lambda: stub(b"", timeout=CALL_TIMEOUT)


async def raw_default_answer(target: str) -> bytes:
    """The feed's default JustOpened answer, as the bytes on the wire."""
    async with grpc.aio.insecure_channel(target) as channel:
        serialize = feed_pb2.JustOpenedRequest.SerializeToString
        stub = channel.unary_unary(f"/{FEED_SERVICE}/JustOpened", serialize, None)
        reply = await stub(feed_pb2.JustOpenedRequest(), timeout=CALL_TIMEOUT)
    assert isinstance(reply, bytes)
    return reply


@dataclass
class Load:
    """What `drive` measured: every call's latency as the client saw it."""

    latencies_ms: list[float]
    seconds: float
    items: int  # in the last answer
    size: int  # bytes of the last answer

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)


async def drive(call: Call, concurrency: int, duration: float) -> Load:
    """`concurrency` coroutines calling back to back for `duration` s, after a warm-up."""
    latencies: list[float] = []
    last: Any = None
    errors = 0

    async def worker(until: float, keep: bool) -> None:
        nonlocal last, errors
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                reply = await call()
            except grpc.aio.AioRpcError as exc:
                errors += 1
                if errors <= 3:
                    log(f"call failed: {exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.01)
                continue
            if keep:
                latencies.append((time.perf_counter() - started) * 1000)
                last = reply

    warmup = min(1.0, max(0.2, duration / 5))
    for keep, seconds in ((False, warmup), (True, duration)):
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds, keep) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if isinstance(last, bytes | None):
        return Load(latencies, elapsed, 0, len(last or b""))
    return Load(latencies, elapsed, len(last.items), last.ByteSize())
