"""`dropwatch up` / `make run`: the whole stack on one machine, with a live terminal view.

Starts, in order: PostgreSQL (embedded unless `DROPWATCH_DATABASE_URL` is set), migrations,
the provider simulator (unless `DROPWATCH_PROVIDER=resy`), the poller and the feed, each as its
own process (as in production). Ctrl-C or SIGTERM stops them in reverse order; nothing is left
behind. The next run reuses the data in `.dropwatch/`.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from sqlalchemy import Engine, text

from shared.db import migrate
from shared.db.engine import unavailable_as_error
from shared.errors import DropwatchError
from shared.settings import Settings
from shared.startup import started


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


@dataclass
class Child:
    name: str
    address: str
    proc: subprocess.Popen[bytes]


@dataclass
class Stack:
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, address: str, args: list[str], env: dict[str, str]) -> None:
        log_dir = env["DROPWATCH_DATA_DIR"]
        log = open(os.path.join(log_dir, f"{name}.log"), "ab")  # noqa: SIM115 (lives with the child)
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C is forwarded by us, in order
        )
        self.children.append(Child(name, address, proc))

    def check(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise DropwatchError(
                    f"{child.name} exited with code {code}; "
                    f"see its log in .dropwatch/{child.name}.log"
                )

    def stop(self) -> None:
        """Reverse order: SIGTERM, wait, then SIGKILL the whole process group."""
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(child.proc.pid, signal.SIGKILL)
                    child.proc.wait(timeout=5)
        self.children.clear()


def run_up(free_ports: bool = False, plain: bool = False) -> int:
    ports = Ports.free() if free_ports else Ports()
    console = Console()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack()
    with started(Settings, "up") as up:
        settings, engine = up.settings, up.engine
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            with unavailable_as_error():
                migrate.upgrade(engine)
            console.print(
                f"[green]PostgreSQL[/] ready: {settings.display_database_url()} (migrated)"
            )
            _start_services(stack, ports, _child_env(settings, up.url))
            console.print(
                f"feed on 127.0.0.1:{ports.feed}: try `dropwatch feed just-opened "
                f"--addr 127.0.0.1:{ports.feed}`; `dropwatch maintenance run` in another "
                "terminal; Ctrl-C stops everything.",
                highlight=False,
            )
            print("stack ready", flush=True)
            _watch(engine, stack, stop, plain or not console.is_terminal, console)
        finally:
            stack.stop()
            print("stopped.", flush=True)
    return 0


def _start_services(stack: Stack, ports: Ports, env: dict[str, str]) -> None:
    """Simulator (unless the real Resy is asked for), poller and feed, in that order."""
    # DROPWATCH_PROVIDER picks what `up` points the poller at: the local simulator (default)
    # or the real Resy ("resy"); the poller itself always speaks Resy's protocol.
    provider = env.pop("DROPWATCH_PROVIDER", "simulator")
    if provider not in ("simulator", "resy"):
        raise DropwatchError("DROPWATCH_PROVIDER: must be 'simulator' or 'resy'")
    if provider == "simulator":
        stack.start(
            "simulator",
            f"http://127.0.0.1:{ports.simulator}",
            ["tools.simulator", "--port", str(ports.simulator)],
            env,
        )
        env["DROPWATCH_RESY_BASE_URL"] = f"http://127.0.0.1:{ports.simulator}"
        # A local simulator can take far more than Resy's polite rate; poll briskly so
        # baselines form and drops show up within a minute.
        env.setdefault("DROPWATCH_REQUESTS_PER_SECOND", "100")
        env.setdefault("DROPWATCH_COOLDOWN_SECONDS", "8")
        _wait_port(ports.simulator, stack)
    stack.start(
        "poller",
        f"metrics :{ports.poller_metrics}, health :{ports.poller_health}",
        [
            "services.poller",
            "--metrics-port",
            str(ports.poller_metrics),
            "--health-port",
            str(ports.poller_health),
        ],
        env,
    )
    stack.start(
        "feed",
        f"grpc 127.0.0.1:{ports.feed}, metrics :{ports.feed_metrics}",
        ["services.feed", "--port", str(ports.feed), "--metrics-port", str(ports.feed_metrics)],
        env,
    )
    _wait_port(ports.feed, stack)


def _child_env(settings: Settings, url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DROPWATCH_DATABASE_URL"] = url
    env["DROPWATCH_DATA_DIR"] = str(settings.data_dir.resolve())
    env.setdefault("DROPWATCH_PAGE_TOKEN_SECRET", "local-make-run")
    return env


def _watch(
    engine: Engine, stack: Stack, stop: threading.Event, plain: bool, console: Console
) -> None:
    if plain:
        while not stop.wait(2):
            stack.check()
            fresh, total, drops = _snapshot(engine)
            opened = sum(1 for d in drops if d[0] == "NEW_DROP")
            latest = (
                f"; latest {drops[0][0]} {drops[0][2]} {drops[0][3]} {drops[0][4]}" if drops else ""
            )
            print(
                f"buckets fresh {fresh}/{total}; last {len(drops)} events: {opened} opened, "
                f"{len(drops) - opened} closed{latest}",
                flush=True,
            )
        return
    with Live(console=console, refresh_per_second=1) as live:
        while not stop.wait(1):
            stack.check()
            live.update(_view(stack, *_snapshot(engine)))


def _snapshot(engine: Engine) -> tuple[int, int, list[tuple[str, ...]]]:
    with engine.connect() as conn:
        fresh, total = conn.execute(
            text(
                "SELECT count(*) FILTER"
                " (WHERE last_healthy_poll_at > now() - interval '2 minutes'),"
                " count(*) FROM discovery_buckets WHERE bucket_date >= current_date - 1"
            )
        ).one()
        rows = conn.execute(
            text(
                "SELECT e.event_type, coalesce(e.closed_at, e.opened_at), v.name, e.slot_date,"
                " e.slot_time, e.seating_type FROM drop_events e"
                " LEFT JOIN venues v ON v.venue_id = e.venue_id"
                " WHERE e.bucket_date >= current_date - 1"
                " ORDER BY e.id DESC LIMIT 12"
            )
        ).all()
    drops: list[tuple[str, ...]] = [
        (
            str(r[0]),
            r[1].astimezone(dt.UTC).strftime("%H:%M:%S"),
            str(r[2] or "?"),
            str(r[3]),
            r[4].strftime("%H:%M"),
            str(r[5]),
        )
        for r in rows
    ]
    return int(fresh), int(total), drops


def _view(stack: Stack, fresh: int, total: int, drops: list[tuple[str, ...]]) -> Group:
    services = Table(title="dropwatch (Ctrl-C to stop)", expand=True)
    services.add_column("service")
    services.add_column("where")
    services.add_column("pid")
    for child in stack.children:
        services.add_row(child.name, child.address, str(child.proc.pid))
    events = Table(title=f"buckets fresh (healthy poll < 2 min): {fresh}/{total}", expand=True)
    for column in ("event", "at (UTC)", "venue", "date", "time", "seating"):
        events.add_column(column)
    for row in drops:
        style = "green" if row[0] == "NEW_DROP" else "red"
        events.add_row(*row, style=style)
    return Group(services, events)


def _wait_port(port: int, stack: Stack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check()
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise DropwatchError(f"nothing listens on port {port} after {timeout:.0f}s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
