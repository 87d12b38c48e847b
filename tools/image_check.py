"""`make image-test`: run every component from the built image against a real PostgreSQL.

The Kubernetes objects run this image; a missing file, a dependency that only the development
install brings, or a permission problem under the non-root user would otherwise first show up
in a cluster. As uid 10001, with the image's files read-only (tools/image_container.py), this
checks what the image holds, migrates a fresh database, starts the feed (health and one
JustOpened call from the host), starts the poller against the simulator run from the host
(a healthy poll recorded), and runs the maintenance job (its JSON summary).

The database server: DROPWATCH_DATABASE_URL's, else PostgreSQL at 127.0.0.1:5432 when it
answers (CI's), else an embedded one on the host (reached through a TCP forwarder to its Unix
socket). A fresh database is created and dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import grpc
import psycopg

from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tools.database import EXTERNAL_URL_ENV, PgServer, pg_server
from tools.image_container import Container, Started, tcp_to_unix
from tools.stack.ready import grpc_serving, http_ok

REPO = Path(__file__).resolve().parent.parent
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
T = TypeVar("T")

# Run in the image: what it ships, and whether importing every component compiles anything
# (it must not: bytecode is built at build time, and the root file system is read-only).
_PROBE = """
import importlib.machinery, importlib.metadata, importlib.util, json, sys
compiled = []
_compile = importlib.machinery.SourceFileLoader.source_to_code
def _record(self, data, path, *args, **kwargs):
    compiled.append(path)
    return _compile(self, data, path, *args, **kwargs)
importlib.machinery.SourceFileLoader.source_to_code = _record
import services.feed.__main__, services.poller.__main__, services.maintenance.__main__
import shared.db.migrate
try:
    open("/opt/dropwatch/probe", "w")
    writable = True
except OSError:
    writable = False
print(json.dumps({
    "compiled": compiled,
    "dists": sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions()),
    "scripts": sorted(e.name + "=" + e.value
                      for e in importlib.metadata.entry_points(group="console_scripts")),
    "importable": [m for m in ("tools", "cli", "bench", "tests")
                   if importlib.util.find_spec(m) is not None],
    "writable": writable,
}))
"""
_CLI_REFERENCE = re.compile(rb"(?<![\w.])cli[.:]main")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    """The first truthy `check()`; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ok(what: str) -> None:
    print(f"   ok  {what}", flush=True)


def _require(condition: bool, what: str, detail: object = "") -> None:
    if not condition:
        raise AssertionError(f"{what}: {detail}" if detail != "" else what)
    ok(what)


def _development_packages() -> set[str]:
    """Every package the `local` and `dev` extras name, and the project itself."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {"dropwatch"}
    for requirement in (r for group in extras["optional-dependencies"].values() for r in group):
        names.add(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def check_config(image: str, driver: str) -> None:
    raw = subprocess.run(
        ["podman", "--storage-driver", driver, "image", "inspect", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    info = json.loads(raw)[0]
    config = info["Config"]
    _require(config.get("User") == "10001:10001", "image runs as 10001:10001", config.get("User"))
    command = [*config.get("Entrypoint", []), *config.get("Cmd", [])]
    _require(command == ["python", "-m", "services.feed"], "entry: python -m services.feed")
    settings = [e for e in config.get("Env", []) if e.startswith("DROPWATCH_")]
    _require(not settings, "image holds no DROPWATCH_ settings", settings)
    print(f"   --  image size {info['Size'] / 1e6:.0f} MB", flush=True)


def check_contents(box: Container) -> None:
    shipped = sorted(os.listdir(box.root / "opt/dropwatch"))
    _require(shipped == ["services", "shared"], "/opt/dropwatch holds services/ and shared/ only")
    _require(not (box.root / "opt/venv/bin/dropwatch").exists(), "no dropwatch console script")
    refs = [
        str(path.relative_to(box.root))
        for top in ("opt", "usr/local/bin", "app")
        for path in (box.root / top).rglob("*")
        if path.is_file() and not path.is_symlink() and _CLI_REFERENCE.search(path.read_bytes())
    ]
    _require(not refs, "no file refers to cli.main (not shipped)", refs)
    done = box.run(["python", "-c", _PROBE])
    _require(done.returncode == 0, "every component imports as uid 10001", done.stderr[-3000:])
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    _require(not found["compiled"], "nothing compiled at start (bytecode built in)", found)
    _require(not found["importable"], "tools, cli, bench, tests not importable", found)
    dev = sorted(_development_packages() & set(found["dists"]))
    _require(not dev, "no development package installed", dev)
    scripts = [s for s in found["scripts"] if s.startswith("dropwatch=") or "=cli." in s]
    _require(not scripts, "no console script of the project", scripts)
    _require(not found["writable"], "/opt not writable by uid 10001")
    as_root = box.run(["sh", "-c", "touch /opt/dropwatch/probe"], user="0:0")
    _require("Read-only file system" in as_root.stderr, "/opt read-only even for root")
    print(f"   --  packages: {' '.join(found['dists'])}", flush=True)


@contextmanager
def database_server(embedded: bool = False) -> Iterator[PgServer]:
    if os.environ.get(EXTERNAL_URL_ENV) and not embedded:
        with pg_server() as server:
            yield server
        return
    with socket.socket() as sock:
        sock.settimeout(2)
        answers = sock.connect_ex(("127.0.0.1", 5432)) == 0
    if answers and not embedded:
        yield PgServer(LOCAL_SERVER, "PostgreSQL at 127.0.0.1:5432")
        return
    os.environ.pop(EXTERNAL_URL_ENV, None)
    with pg_server("dropwatch-image-") as server:  # embedded, on the host
        yield server


def _unix_socket(url: str) -> str | None:
    """The Unix socket of a libpq URL (the embedded server listens on one only)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or ""])[0]
    port = query.get("port", [str(parts.port or 5432)])[0]
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None


def _query(url: str, sql: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql.encode()).fetchone()
        return row[0] if row else None


def _stop(started: Started) -> None:
    code = started.stop()
    _require(code == 0, f"{started.name} stops on SIGTERM with exit 0", started.output())


def check_migrate(box: Container, env: dict[str, str], url: str) -> None:
    done = box.run(["python", "-m", "shared.db.migrate"], env)
    _require(done.returncode == 0, "python -m shared.db.migrate", done.stderr[-3000:])
    revision = _query(url, "SELECT version_num FROM alembic_version")
    _require(bool(revision), f"schema at revision {revision}")


def check_feed(box: Container, env: dict[str, str]) -> None:
    port, metrics = free_port(), free_port()
    feed_env = {
        **env,
        "DROPWATCH_FEED_PORT": str(port),
        "DROPWATCH_METRICS_PORT": str(metrics),
        "DROPWATCH_PAGE_TOKEN_SECRET": "image-test-" + "0" * 32,
    }
    feed = box.start("feed", ["python", "-m", "services.feed"], feed_env)

    def serving() -> bool:
        if not feed.running():
            raise AssertionError(f"the feed exited:\n{feed.output()}")
        return grpc_serving(f"127.0.0.1:{port}")() is None

    wait_for(serving, "the feed's grpc.health.v1 to answer SERVING")
    ok("feed: grpc.health.v1 SERVING")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = feed_pb2_grpc.FeedServiceStub(channel).JustOpened(
            feed_pb2.JustOpenedRequest(), timeout=10
        )
    ok(f"feed: JustOpened answered ({len(reply.ListFields())} fields set)")
    _require(http_ok(f"http://127.0.0.1:{metrics}/metrics")() is None, "feed: /metrics")
    _stop(feed)


def check_poller(box: Container, env: dict[str, str], url: str) -> None:
    sim_port, health, metrics = free_port(), free_port(), free_port()
    simulator = subprocess.Popen(
        [sys.executable, "-m", "tools.simulator", "--port", str(sim_port), "--venues", "20"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: http_ok(f"http://127.0.0.1:{sim_port}/_sim/health")() is None,
            "the simulator to answer",
        )
        poller_env = {
            **env,
            "DROPWATCH_RESY_BASE_URL": f"http://127.0.0.1:{sim_port}",
            "DROPWATCH_HEALTH_PORT": str(health),
            "DROPWATCH_METRICS_PORT": str(metrics),
            "DROPWATCH_WINDOW_DAYS": "1",
            "DROPWATCH_COOLDOWN_SECONDS": "2",
            "DROPWATCH_TICK_SECONDS": "0.5",
            "DROPWATCH_REQUESTS_PER_SECOND": "1000",
        }
        poller = box.start("poller", ["python", "-m", "services.poller"], poller_env)

        def polled() -> int:
            if not poller.running():
                raise AssertionError(f"the poller exited:\n{poller.output()}")
            sql = "SELECT count(*) FROM discovery_buckets WHERE last_healthy_poll_at IS NOT NULL"
            return int(_query(url, sql))

        count = wait_for(polled, "discovery_buckets.last_healthy_poll_at to be set", 90)
        ok(f"poller: healthy poll recorded ({count} bucket(s))")
        serving = grpc_serving(f"127.0.0.1:{health}")()
        _require(serving is None, "poller: grpc.health.v1 SERVING", serving)
        _stop(poller)
    finally:
        simulator.terminate()
        simulator.wait(10)


def check_maintenance(box: Container, env: dict[str, str]) -> None:
    done = box.run(["python", "-m", "services.maintenance", "run"], env)
    _require(done.returncode == 0, "python -m services.maintenance run", done.stderr[-3000:])
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    _require(summary.get("ok") is True and summary.get("ran") is True, "maintenance ran", summary)
    _require(bool(summary.get("steps")), f"maintenance steps: {', '.join(summary['steps'])}")


def run_checks(image: str, driver: str, logs: Path, embedded: bool = False) -> None:
    print(f"== image-test: {image}", flush=True)
    check_config(image, driver)
    with database_server(embedded) as server, ExitStack() as stack:
        print(f"== database: {server.description}", flush=True)
        name = stack.enter_context(server.database("dropwatch_image"))
        url = box_url = server.url_for(name)
        unix = _unix_socket(url)
        if unix:  # uid 10001 may not enter the server's directory: give it TCP instead
            port = stack.enter_context(tcp_to_unix(unix))
            user = urlsplit(url).username or "postgres"
            box_url = f"postgresql://{user}@127.0.0.1:{port}/{name}"
            print(f"   --  the container reaches it at 127.0.0.1:{port}", flush=True)
        box = Container(image, logs, driver)
        stack.callback(box.remove)  # first out: stop the components, then drop the database
        box.create()
        print("== contents", flush=True)
        check_contents(box)
        env = {"DROPWATCH_DATABASE_URL": box_url}
        print("== components, from the image, as uid 10001", flush=True)
        check_migrate(box, env, url)
        check_feed(box, env)
        check_poller(box, env, url)
        check_maintenance(box, env)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-ups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.image_check", description=__doc__)
    parser.add_argument("--image", default="localhost/dropwatch:dev")
    parser.add_argument(
        "--storage-driver", default=os.environ.get("DROPWATCH_STORAGE_DRIVER", "vfs")
    )
    parser.add_argument(
        "--embedded", action="store_true", help="an embedded server on the host, whatever answers"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dropwatch-image-") as logs:
        try:
            run_checks(args.image, args.storage_driver, Path(logs), args.embedded)
        except (AssertionError, RuntimeError, subprocess.SubprocessError) as exc:
            print(f"image-test FAILED: {exc}", file=sys.stderr, flush=True)
            return 1
    print(f"== image-test passed in {time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
