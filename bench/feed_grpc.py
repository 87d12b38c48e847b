"""The feed benchmark's gRPC side: the feed and a bare echo server as child processes, and the
client that drives them (N coroutines calling back to back on one channel)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from bench.harness import child, log, percentile
from shared.gen.dropwatch.feed.v1 import feed_pb2

CALL_TIMEOUT = 30.0
ECHO_SERVICE = "dropwatch.bench.Echo"
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
class Server:
    proc: subprocess.Popen[Any]
    target: str  # host:port of its gRPC server
    log_path: Path
    metrics_port: int = 0

    async def ready(self) -> None:
        """Until its gRPC server answers (a minute at most); stops the run if it exits."""
        for _ in range(60):
            if self.proc.poll() is not None:
                break
            with suppress(TimeoutError):
                async with grpc.aio.insecure_channel(self.target) as channel:
                    return await asyncio.wait_for(channel.channel_ready(), timeout=1.0)
        log = self.log_path.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(
            f"{self.proc.args!r} not ready ({self.proc.returncode}):\n" + "\n".join(log)
        )

    def cache_counts(self) -> dict[str, float]:
        """The feed's JustOpened cache counters (hit, miss) from its /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        pattern = r'^dropwatch_feed_cache_requests_total\{result="(\w+)",rpc="JustOpened"\} (\S+)$'
        return {m[1]: float(m[2]) for m in re.finditer(pattern, body, re.M)}


@contextmanager
def served(
    args: list[str], log_path: Path, env: dict[str, str], metrics: int = 0
) -> Iterator[Server]:
    """A gRPC server child on a free port (`{port}` in `args`), its output in `log_path`."""
    port = free_port()
    args = [a.replace("{port}", str(port)) for a in args]
    with log_path.open("wb") as out, child(args, env, stdout=out, stderr=subprocess.STDOUT) as p:
        yield Server(p, f"127.0.0.1:{port}", log_path, metrics)


def feed_server(url: str, logs: Path, name: str, cache_ttl: float) -> ContextManager[Server]:
    """`python -m services.feed` against the benchmark's database."""
    metrics = free_port()
    env = dict(os.environ, DROPWATCH_DATABASE_URL=url, DROPWATCH_LOG_LEVEL="INFO")
    env.update(DROPWATCH_PAGE_TOKEN_SECRET="bench", DROPWATCH_CACHE_TTL_SECONDS=str(cache_ttl))
    args = ["-m", "services.feed", "--port", "{port}", "--metrics-port", str(metrics)]
    return served(args, logs / f"feed-{name}.log", env, metrics)


def echo_server(logs: Path, payload: bytes) -> ContextManager[Server]:
    (logs / "payload.bin").write_bytes(payload)
    code = f"from bench.feed_grpc import serve_echo; serve_echo({{port}}, {str(logs)!r})"
    return served(["-c", code], logs / "echo.log", dict(os.environ))


def serve_echo(port: int, logs: str) -> None:
    """The echo child: a bare grpc.aio server, generic handlers, no interceptor."""
    payload = (Path(logs) / "payload.bin").read_bytes()
    message = feed_pb2.JustOpenedResponse.FromString(payload)
    serialize = feed_pb2.JustOpenedResponse.SerializeToString
    answers = {"Empty": (b"", None), "Bytes": (payload, None), "Message": (message, serialize)}

    def handler(answer: Any, serializer: Any) -> grpc.RpcMethodHandler[Any, Any]:
        async def handle(request: bytes, context: Any) -> Any:
            return answer

        return grpc.unary_unary_rpc_method_handler(handle, None, serializer)

    async def main() -> None:  # until SIGTERM
        server = grpc.aio.server()
        handlers = {method: handler(*answer) for method, answer in answers.items()}
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(ECHO_SERVICE, handlers),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


Call = Callable[[], Awaitable[Any]]


def echo_call(channel: grpc.aio.Channel, method: str) -> Call:
    parse = None if method == "Empty" else feed_pb2.JustOpenedResponse.FromString
    stub = channel.unary_unary(f"/{ECHO_SERVICE}/{method}", None, parse)
    return lambda: stub(b"", timeout=CALL_TIMEOUT)


class Load(NamedTuple):
    """What `drive` measured, every call's latency as the client saw it."""

    p50: float  # ms
    p99: float
    rps: float
    items: int  # in the last answer
    size: int  # bytes of the last answer


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

    for keep, seconds in ((False, min(1.0, max(0.2, duration / 5))), (True, duration)):
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds, keep) for _ in range(concurrency)))
    rps = len(latencies) / (time.perf_counter() - started)
    items, size = (
        (0, len(last or b""))
        if isinstance(last, bytes | None)
        else (len(last.items), last.ByteSize())
    )
    return Load(percentile(latencies, 50), percentile(latencies, 99), rps, items, size)
