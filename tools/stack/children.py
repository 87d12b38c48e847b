"""The stack's child processes: started in order, watched, stopped in reverse order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import DropwatchError
from tools.stack.logs import LogPump, RotatingLog


@dataclass
class Child:
    name: str
    address: str
    proc: subprocess.Popen[bytes]
    pump: LogPump

    @property
    def log_path(self) -> Path:
        return self.pump.log.path


@dataclass
class Stack:
    log_dir: Path
    on_change: Callable[[list[Child]], None] = lambda children: None
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, address: str, args: list[str], env: dict[str, str]) -> Child:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # signals reach it from us, in order, never from the tty
        )
        assert proc.stdout is not None
        pump = LogPump(proc.stdout, RotatingLog(self.log_dir / f"{name}.log"), name)
        child = Child(name, address, proc, pump)
        self.children.append(child)
        self.on_change(self.children)
        return child

    def check(self) -> None:
        """Raise, naming the child and its last words, if one has exited."""
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                child.pump.join(timeout=2)
                last = child.pump.last_line()
                said = f": {last}" if last else ""
                raise DropwatchError(
                    f"{child.name} exited with code {code}{said} (its log: {child.log_path})"
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
            child.pump.join()
        self.children.clear()
        self.on_change(self.children)
