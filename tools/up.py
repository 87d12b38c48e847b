"""`dropwatch up` / `make run`: the whole stack on one machine, with a live terminal view.

Before anything starts: one stack per folder (a second `up` says one is running), what a
previous `up` that died left running is stopped, and every port is checked (a taken one is
named with its holder). Then, in order: PostgreSQL (embedded unless `DROPWATCH_DATABASE_URL`
is set), migrations, the provider simulator (unless `DROPWATCH_PROVIDER=resy`), the poller and
the feed, each as its own process (as in production), all bound to 127.0.0.1. "stack ready"
is printed once each service answers its own health check. Ctrl-C, SIGTERM or a closed
terminal (SIGHUP) stops them in reverse order; nothing is left behind. The next run reuses
the data in `.dropwatch/`, where the services' logs are too (rotated, see tools/stack/logs.py).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.live import Live
from sqlalchemy import Engine

from shared.db import migrate
from shared.db.buckets import market_today
from shared.db.engine import unavailable_as_error
from shared.errors import DropwatchError
from shared.settings import Settings, load_settings
from shared.startup import started
from tools.stack import guard, ready, seeded, view
from tools.stack.children import Stack
from tools.stack.drops import LiveDrops

LOCAL_HOST = "127.0.0.1"


@dataclass
class Ports:
    simulator: int = 8765
    poller_metrics: int = 9101
    poller_health: int = 50052
    feed: int = 50051
    feed_metrics: int = 9102

    @classmethod
    def free(cls) -> Ports:
        return cls(*(_free_port() for _ in range(5)))

    def named(self, simulator: bool) -> dict[str, int]:
        names = {
            "simulator": self.simulator,
            "poller metrics": self.poller_metrics,
            "poller health": self.poller_health,
            "feed gRPC": self.feed,
            "feed metrics": self.feed_metrics,
        }
        if not simulator:
            del names["simulator"]
        return names


class _Output:
    """Console lines that a closed terminal (SIGHUP) cannot turn into an error."""

    def __init__(self) -> None:
        self.console = Console()
        self.hung_up = threading.Event()

    def say(self, message: str) -> None:
        try:
            self.console.print(message, highlight=False, soft_wrap=True)
        except OSError:
            if not self.hung_up.is_set():
                raise

    def plain(self, message: str) -> None:
        try:
            print(message, flush=True)
        except OSError:
            if not self.hung_up.is_set():
                raise


def run_up(free_ports: bool = False, plain: bool = False) -> int:
    out = _Output()
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            out.hung_up.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    settings = load_settings(Settings)
    data_dir = settings.data_dir.resolve()
    # A pod listens on every interface; a laptop only on loopback, unless asked otherwise.
    host = settings.bind_host if "bind_host" in settings.model_fields_set else LOCAL_HOST
    provider = os.environ.get("DROPWATCH_PROVIDER", "simulator")
    if provider not in ("simulator", "resy"):
        raise DropwatchError("DROPWATCH_PROVIDER: must be 'simulator' or 'resy'")
    with guard.one_stack(data_dir):
        left = guard.stop_leftovers(data_dir)
        if left:
            out.say(f"stopped what a previous `dropwatch up` left running: {', '.join(left)}")
        ports = Ports.free() if free_ports else Ports()
        guard.check_ports(ports.named(provider == "simulator"), host)
        stack = Stack(data_dir, on_change=lambda children: guard.record(data_dir, children))
        with started(Settings, "up") as up:
            try:
                with unavailable_as_error():
                    migrate.upgrade(up.engine)
                out.say(f"[green]PostgreSQL[/] ready: {settings.display_database_url()} (migrated)")
                env = _child_env(settings, up.url, host)
                world: list[str] = []
                if provider == "simulator":
                    world = _seeded_world(up.engine, settings, data_dir / "world.json")
                checks = _start_services(stack, ports, env, host, provider, world, stop)
                if ready.wait_ready(checks, stack, stop):
                    _say_ready(out, stack, ports, host)
                    plain = plain or not out.console.is_terminal
                    feed = f"{_connect_host(host)}:{ports.feed}"
                    _watch(up.engine, settings.zone, feed, stack, stop, plain, out)
            except OSError:
                if not out.hung_up.is_set():  # writes to a closed terminal fail: expected
                    raise
            finally:
                stack.stop()
                out.plain("stopped.")
    return 0


def _seeded_world(engine: Engine, settings: Settings, path: Path) -> list[str]:
    """The simulator's `--world` arguments: the database's live open slots (seeded venues'
    among them stay open until the simulator's model closes them)."""
    count = seeded.export_world(engine, market_today(settings.zone), path)
    return ["--world", str(path)] if count else []


def _start_services(
    stack: Stack,
    ports: Ports,
    env: dict[str, str],
    host: str,
    provider: str,
    world: list[str],
    stop: threading.Event,
) -> list[ready.Check]:
    """Simulator (unless the real Resy is asked for), poller and feed, in that order; the
    health checks that must pass before the stack is ready."""
    at = _connect_host(host)
    checks = []
    if provider == "simulator":
        url = f"http://{at}:{ports.simulator}"
        sim = stack.start(
            "simulator",
            url,
            ["tools.simulator", "--host", host, "--port", str(ports.simulator), *world],
            env,
        )
        health = ready.Check(sim.name, "GET /_sim/health", ready.http_ok(f"{url}/_sim/health"))
        if not ready.wait_ready([health], stack, stop):  # the poller needs it first
            return []
        env["DROPWATCH_RESY_BASE_URL"] = url
        # A local simulator can take far more than Resy's polite rate; poll briskly so
        # baselines form and drops show up within a minute.
        env.setdefault("DROPWATCH_REQUESTS_PER_SECOND", "100")
        env.setdefault("DROPWATCH_COOLDOWN_SECONDS", "8")
        # A seeded world can have thousands of venues open in one bucket: room for them all.
        env.setdefault("DROPWATCH_PER_PAGE", "200")
        env.setdefault("DROPWATCH_MAX_PAGES", "50")
    poller = stack.start(
        "poller",
        f"metrics {at}:{ports.poller_metrics}, health {at}:{ports.poller_health}",
        [
            "services.poller",
            "--metrics-port",
            str(ports.poller_metrics),
            "--health-port",
            str(ports.poller_health),
        ],
        env,
    )
    feed = stack.start(
        "feed",
        f"grpc {at}:{ports.feed}, metrics {at}:{ports.feed_metrics}",
        ["services.feed", "--port", str(ports.feed), "--metrics-port", str(ports.feed_metrics)],
        env,
    )
    for child, grpc_port, metrics_port in (
        (poller, ports.poller_health, ports.poller_metrics),
        (feed, ports.feed, ports.feed_metrics),
    ):
        metrics = f"http://{at}:{metrics_port}/metrics"
        checks.append(
            ready.Check(child.name, "gRPC health", ready.grpc_serving(f"{at}:{grpc_port}"))
        )
        checks.append(ready.Check(child.name, "GET /metrics", ready.http_ok(metrics)))
    return checks


def _say_ready(out: _Output, stack: Stack, ports: Ports, host: str) -> None:
    for child in stack.children:
        out.say(f"  {child.name}: {child.address} (log {child.log_path})")
    at = _connect_host(host)
    out.say(
        f"feed on {at}:{ports.feed}: try `dropwatch feed just-opened --addr {at}:{ports.feed}`; "
        "`dropwatch maintenance run` in another terminal; Ctrl-C stops everything."
    )
    out.plain("stack ready")


def _child_env(settings: Settings, url: str, host: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DROPWATCH_PROVIDER", None)
    env["DROPWATCH_DATABASE_URL"] = url
    env["DROPWATCH_DATA_DIR"] = str(settings.data_dir.resolve())
    env["DROPWATCH_BIND_HOST"] = host
    env.setdefault("DROPWATCH_PAGE_TOKEN_SECRET", "local-make-run-" + "0" * 32)
    return env


def _watch(
    engine: Engine,
    zone: ZoneInfo,
    feed: str,
    stack: Stack,
    stop: threading.Event,
    plain: bool,
    out: _Output,
) -> None:
    """Until `stop`: the view, its drops pushed by the feed's WatchDrops stream."""
    drops = LiveDrops(feed, zone).start()
    try:
        if plain:
            while not stop.wait(2):
                stack.check()
                out.plain(view.snapshot(engine, drops).line())
            return
        with Live(console=out.console, refresh_per_second=1) as live:
            while not stop.wait(1):
                stack.check()
                live.update(view.render(stack.children, view.snapshot(engine, drops), zone))
    finally:
        drops.stop()


def _connect_host(host: str) -> str:
    """Where a client on this machine reaches a service bound to `host`."""
    return LOCAL_HOST if host in ("0.0.0.0", "::", "") else host


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCAL_HOST, 0))
        return int(sock.getsockname()[1])
