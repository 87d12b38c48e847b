"""Run commands from the dropwatch image without a container engine's `run`.

`podman run` cannot start containers in an unprivileged sandbox (the OCI runtime may not set
resource limits), but `buildah run --isolation chroot` runs a command in the image's file system
with the host network, as the image's user. This module makes one working container of the
image, bind-mounts the image's own /opt and /usr over themselves read-only (the manifests run
with `readOnlyRootFilesystem`; uid 10001 could not write there anyway, so this also proves the
image needs no write outside its volumes), and starts and stops commands in it.

buildah does not pass SIGTERM on to the command (it kills it), so a graceful stop signals the
command's own process, found among buildah's descendants.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

USER = "10001:10001"
READ_ONLY = ("/opt", "/usr")
PREFIX = "dropwatch-image-test-"  # then the process id of the run that made the container


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        below = children.get(todo.pop(0), [])
        found.extend(below)
        todo.extend(below)
    return found


def _argv0(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""


@dataclass
class Started:
    """A command running in the container; its output goes to `log`."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self, last: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-last:]

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the command itself (graceful); its exit code. Kills it after `timeout`."""
        if self.running():
            inner = [p for p in _descendants(self.process.pid) if _argv0(p).endswith("python")]
            for pid in inner[-1:]:  # the deepest: the command, not buildah's exec wrapper
                os.kill(pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def kill(self) -> None:
        for pid in [*_descendants(self.process.pid), self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()


@dataclass
class Container:
    """A buildah working container of `image`, mounted; `remove()` cleans it up."""

    image: str
    logs: Path
    driver: str = "vfs"
    name: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    root: Path = Path("/nonexistent")
    _started: list[Started] = field(default_factory=list)

    def buildah(self, *args: str) -> str:
        done = subprocess.run(
            ["buildah", "--storage-driver", self.driver, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode:
            raise RuntimeError(f"buildah {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()

    def create(self) -> None:
        self._remove_leftovers()
        self.buildah("from", "--pull-never", "--name", self.name, self.image)
        self.root = Path(self.buildah("mount", self.name))

    def _remove_leftovers(self) -> None:
        """Working containers of runs that were killed (each holds a copy of the image)."""
        names = self.buildah("containers", "--format", "{{.ContainerName}}").split()
        for name in names:
            owner = name.removeprefix(PREFIX)
            ours = name.startswith(PREFIX) and owner.isdigit()
            if ours and (name == self.name or not Path(f"/proc/{owner}").exists()):
                self.buildah("rm", name)

    def argv(self, command: Sequence[str], env: Mapping[str, str], user: str = USER) -> list[str]:
        mounts = {str(self.root) + path: path + ":ro" for path in READ_ONLY}
        args = ["buildah", "--storage-driver", self.driver, "run", "--isolation", "chroot"]
        args += ["--network", "host", "--user", user]
        for source, target in mounts.items():
            args += ["--volume", f"{source}:{target}"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        return [*args, self.name, "--", *command]

    def run(
        self,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        user: str = USER,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command, env or {}, user),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, name: str, command: Sequence[str], env: Mapping[str, str]) -> Started:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                self.argv(command, env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = Started(name, process, log)
        self._started.append(started)
        return started

    def remove(self) -> None:
        """Kill what still runs, unmount and delete the working container."""
        for started in self._started:
            if started.running():
                started.kill()
        if self.root != Path("/nonexistent"):
            self.buildah("rm", self.name)  # unmounts too


class _Forward(socketserver.BaseRequestHandler):
    """One TCP connection, relayed byte for byte to the Unix socket `target`."""

    target = ""

    def handle(self) -> None:
        with socket.socket(socket.AF_UNIX) as upstream:
            upstream.connect(self.target)
            peer = {self.request: upstream, upstream: self.request}
            while True:
                ready, _, _ = select.select(list(peer), [], [])
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peer[sock].sendall(data)


@contextlib.contextmanager
def tcp_to_unix(path: str) -> Iterator[int]:
    """A loopback TCP port that forwards to the Unix socket `path`, for the block; its port.

    The embedded server listens on a Unix socket in a directory only its owner may enter, which
    uid 10001 in the container cannot; over TCP it needs no permission on the host's files."""
    handler = type("Handler", (_Forward,), {"target": path})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="tcp-to-unix", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
