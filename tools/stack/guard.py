"""What `up` checks before it starts anything: one stack per folder, no leftovers, free ports.

A lock file held for the life of `up` (the kernel releases it however `up` ends) tells a
second `make run` in the same folder that one is running. `up.json` records the children of
the running stack; if `up` died without stopping them (SIGKILL, a crash), the next `up` finds
them through it and stops them before it starts. Then each port the stack needs is bound once
to see that it is free; a taken one is named with the program that holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import psutil

from shared.errors import DropwatchError
from tools.stack.children import Child

LOCK_FILE = "up.lock"
STATE_FILE = "up.json"


@contextlib.contextmanager
def one_stack(data_dir: Path) -> Iterator[None]:
    """Hold this folder's lock while the stack runs; refuse if another `up` holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock: IO[str] = (data_dir / LOCK_FILE).open("a+")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            lock.seek(0)
            pid = lock.read().strip() or "?"
            raise DropwatchError(
                f"a stack is already running from this folder (`dropwatch up`, pid {pid}, "
                f"state in {data_dir}); use it, or stop it first (Ctrl-C in its terminal, "
                f"or kill {pid})"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield
    finally:
        lock.close()  # releases the lock


def record(data_dir: Path, children: list[Child]) -> None:
    """Write the running children to up.json (removed when none are left)."""
    path = data_dir / STATE_FILE
    if not children:
        path.unlink(missing_ok=True)
        return
    entries = [
        {"name": c.name, "pid": c.proc.pid, "started": _started(c.proc.pid)} for c in children
    ]
    path.write_text(json.dumps({"up": os.getpid(), "children": entries}))


def stop_leftovers(data_dir: Path, timeout: float = 10) -> list[str]:
    """Stop the children a previous `up` left running; returns "name (pid N)" for each."""
    path = data_dir / STATE_FILE
    try:
        entries = json.loads(path.read_text())["children"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    stopped = []
    for entry in entries:
        pid, started = int(entry["pid"]), entry["started"]
        if started is None or _started(pid) != started:
            continue  # gone, or the pid now belongs to another process
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)  # each child leads its own process group
        try:
            psutil.Process(pid).wait(timeout)
        except psutil.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        except psutil.Error:
            pass
        stopped.append(f"{entry['name']} (pid {pid})")
    path.unlink(missing_ok=True)
    return stopped


def _started(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def check_ports(ports: Mapping[str, int], host: str) -> None:
    """Raise one error naming every taken port and who holds it."""
    taken = [
        f"{port} ({what}) {_holder(port)}" for what, port in ports.items() if _taken(host, port)
    ]
    if taken:
        raise DropwatchError(
            "port already in use: " + "; ".join(taken) + ". Stop what holds it, or run "
            "`.venv/bin/dropwatch up --free-ports` to use free ports instead"
        )


def _taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # As the services do: a port left in TIME_WAIT by the last run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _holder(port: int) -> str:
    """ "is held by pid N (its command line)", or why that cannot be said."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid is None:
                    break
                with contextlib.suppress(psutil.Error):
                    command = " ".join(psutil.Process(conn.pid).cmdline())[:100]
                    return f"is held by pid {conn.pid} ({command})"
                return f"is held by pid {conn.pid}"
    return f"is held by a program this user cannot see (`ss -ltnp 'sport = :{port}'` shows it)"
