"""`dropwatch up` end to end, as a developer meets it: Ctrl-C, a killed stack, a closed
terminal. Each run uses free ports and its own data directory."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import pty
import signal
import subprocess
import sys
import termios
from pathlib import Path

import psutil
import pytest

from tests.cli.test_cli import REPO, _env
from tests.waiting import wait_until
from tools.stack import guard

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(os.environ.get("DROPWATCH_DATABASE_URL")), reason="runs the embedded server"
    ),
]

UP = [sys.executable, "-m", "cli.main", "up", "--free-ports", "--plain"]


def _leftovers(data_dir: Path) -> list[str]:
    """Processes of this stack still alive: its PostgreSQL and any dropwatch service."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            env = proc.info["environ"] or {}
        except (psutil.Error, TypeError):
            continue
        mine = str(data_dir) in cmdline or env.get("DROPWATCH_DATA_DIR") == str(data_dir)
        if mine and proc.pid != os.getpid():
            found.append(f"{proc.pid} {cmdline[:80]}")
    return found


class Output:
    """Everything a running `up` printed so far, read without blocking on a pipe or a pty."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.text = ""
        os.set_blocking(fd, False)

    def read(self) -> str:
        try:
            while chunk := os.read(self.fd, 65536):
                self.text += chunk.decode(errors="replace")
        except (BlockingIOError, OSError):
            pass
        return self.text

    def wait_for(self, marker: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> str:
        def seen() -> bool:
            if proc.poll() is not None and marker not in self.read():
                raise AssertionError(f"up exited ({proc.returncode}): {self.text}")
            return marker in self.read()

        wait_until(seen, lambda: f"{marker!r} in: {self.text[-3000:]}", timeout)
        return self.text


def _start(data_dir: Path, **env: str) -> tuple[subprocess.Popen[bytes], Output]:
    proc = subprocess.Popen(
        UP,
        cwd=REPO,
        env=_env(DROPWATCH_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    return proc, Output(proc.stdout.fileno())


def _end(
    proc: subprocess.Popen[bytes], out: Output, data_dir: Path, *, stop_leftovers: bool = True
) -> None:
    """After a failed test too: stop the stack, whatever state it is in."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if stop_leftovers:
        guard.stop_leftovers(data_dir)
    out.read()
    if proc.stdout is not None:
        proc.stdout.close()


def _feed_port(text: str) -> int:
    line = next(s for s in text.splitlines() if s.startswith("feed on 127.0.0.1:"))
    return int(line.split("127.0.0.1:")[1].split(":")[0])


def _just_opened(port: int) -> int:
    import grpc

    from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = feed_pb2_grpc.FeedServiceStub(channel)
        return len(stub.JustOpened(feed_pb2.JustOpenedRequest(), timeout=5).items)


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # gRPC listens on an IPv6 socket for 127.0.0.1 too
    return address.is_loopback


def _children(data_dir: Path) -> list[int]:
    return [c["pid"] for c in json.loads((data_dir / "up.json").read_text())["children"]]


def test_up_runs_the_whole_stack_on_loopback_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    data_dir = (tmp_path / "state").resolve()
    # Brisk polling: new buckets baseline (three healthy polls) within seconds.
    proc, out = _start(data_dir, DROPWATCH_COOLDOWN_SECONDS="1", DROPWATCH_TICK_SECONDS="0.5")
    try:
        text = out.wait_for("stack ready", proc)
        for pid in _children(data_dir):
            listening = [
                c.laddr.ip
                for c in psutil.Process(pid).net_connections("inet")
                if c.status == psutil.CONN_LISTEN
            ]
            assert listening and all(_loopback(ip) for ip in listening), (pid, listening)
        port = _feed_port(text)  # drops from the poller and the simulator, within a minute
        wait_until(lambda: _just_opened(port) > 0, "drops in the feed", timeout=60)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        _end(proc, out, data_dir)
    assert proc.returncode == 0, out.read()
    assert "stopped." in out.read()
    assert _leftovers(data_dir) == []
    assert not (data_dir / "up.json").exists()


def test_a_killed_stack_is_cleared_and_a_closed_terminal_stops_the_next(tmp_path: Path) -> None:
    """SIGKILL leaves the services and PostgreSQL running (and a dead user on the embedded
    server's list); the next `up` stops them and starts; closing its terminal stops it all."""
    data_dir = (tmp_path / "state").resolve()
    proc, out = _start(data_dir)
    try:
        out.wait_for("stack ready", proc)
        left = _children(data_dir)
    except BaseException:
        _end(proc, out, data_dir)
        raise
    proc.kill()
    proc.wait(timeout=10)
    _end(proc, out, data_dir, stop_leftovers=False)  # they are the next up's to find
    assert all(psutil.pid_exists(pid) for pid in left)

    # The next one runs in a terminal of its own, which is then closed (as tmux kill-session
    # or closing the window does): the kernel hangs it up with SIGHUP.
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        UP,
        cwd=REPO,
        env=_env(DROPWATCH_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(slave)
    term = Output(master)
    try:
        text = term.wait_for("stack ready", proc)
        assert "stopped what a previous `dropwatch up` left running" in text
        assert all(f"pid {pid}" in text for pid in left)
        os.close(master)
        proc.wait(timeout=60)
    finally:
        _end(proc, term, data_dir)
    assert proc.returncode == 0
    assert _leftovers(data_dir) == [], "left behind after the terminal closed"
    assert (data_dir / "pgdata" / "PG_VERSION").exists()  # the data stays for the next run
