"""A child's output, copied into its log file by a thread, with rotation.

The children write to a pipe rather than straight into the file so that `up` can cap each
log (a long `make run` must not fill the disk) and show the last lines of a child that exits.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import IO

MAX_BYTES = 10 << 20  # per file; make run's brisk poller writes about 1 MB an hour
BACKUPS = 2  # name.log.1 and name.log.2 are kept beside name.log
TAIL_LINES = 5


class RotatingLog:
    """Appends to `path`; past `max_bytes` it becomes `path.1` (and `.1` becomes `.2` ...)."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: IO[bytes] | None = None
        if path.exists() and path.stat().st_size >= max_bytes:
            self._rotate()
        self._open()

    def _open(self) -> None:
        self._file = self.path.open("ab")

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for n in range(self.backups, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            newer = self.path.with_name(f"{self.path.name}.{n - 1}") if n > 1 else self.path
            if newer.exists():
                newer.replace(older)

    def write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._file.flush()
        if self._file.tell() >= self.max_bytes:
            self._rotate()
            self._open()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LogPump:
    """Copies a child's stdout, line by line, into its RotatingLog until the pipe closes."""

    def __init__(self, source: IO[bytes], log: RotatingLog, name: str) -> None:
        self.log = log
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._source = source
        self._thread = threading.Thread(target=self._run, name=f"log-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in iter(self._source.readline, b""):
                self.log.write(line)
                self.tail.append(line.decode(errors="replace").rstrip())
        finally:
            self._source.close()
            self.log.close()

    def join(self, timeout: float = 5) -> None:
        self._thread.join(timeout)

    def last_line(self) -> str:
        """The child's last non-empty line (after the pipe has closed, its final words)."""
        return next((line for line in reversed(self.tail) if line.strip()), "")
