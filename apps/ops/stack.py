"""The whole stack in one foreground process: controller, worker and one agent as children.

`manage.py run_stack` (and so `make run`) prepares what a first run needs (database, admin,
internal key, a registration token for an agent without credentials), starts the three
processes, relays their output line by line with a name in front, and stops them all on
Ctrl-C or SIGTERM. When one of them dies, the others are stopped too and the stack exits
non-zero: a half-running stack that looks healthy is worse than a clear failure.
"""

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

MANAGE = Path(__file__).resolve().parent.parent.parent / "manage.py"
# How long each child gets to finish its work after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 20
START_TIMEOUT_SECONDS = 60


class ChildDied(Exception):
    """A child process exited while the stack was running."""


def internal_key_from(var_dir: Path) -> str:
    """The key kept under var/, made on first use; shared by the local worker and agent."""
    path = var_dir / "internal_key"
    if path.exists():
        return path.read_text().strip()
    var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


# Loaded here, not in the forked child, where taking the import lock could deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: a child gets SIGTERM if run_stack itself is killed, so nothing is left behind.
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised process and the thread that relays its output."""

    name: str
    args: list[str]
    extra_env: dict[str, str]
    popen: subprocess.Popen | None = None
    relay: threading.Thread | None = field(default=None, repr=False)

    def start(self, out, prefix: bool) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, str(MANAGE), *self.args],
            # The stack's own environment passes through; only the secrets it made are added.
            env={**os.environ, **self.extra_env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own process group: Ctrl-C reaches run_stack only, which stops the children
            # in order instead of all of them at once.
            process_group=0,
            preexec_fn=_die_with_parent,
        )
        self.relay = threading.Thread(
            target=self._relay, args=(out, prefix), name=f"relay-{self.name}", daemon=True
        )
        self.relay.start()

    def _relay(self, out, prefix: bool) -> None:
        label = f"{self.name:<10} | ".encode() if prefix else b""
        for line in iter(self.popen.stdout.readline, b""):
            out.write(label + line)
            out.flush()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exit_code(self) -> int | None:
        return self.popen.poll()

    def stop(self) -> int:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.relay is not None:
            self.relay.join(2)
        return self.popen.returncode


class Stack:
    """Starts the children in order, watches them, and stops them in reverse order."""

    def __init__(self, children: list[Child], out, prefix: bool = True) -> None:
        self.children = children
        self.out = out
        self.prefix = prefix
        self.stop_requested = threading.Event()

    def say(self, text: str) -> None:
        self.out.write(text.rstrip("\n").encode() + b"\n")
        self.out.flush()

    def start(self, child: Child, ready_url: str | None) -> None:
        child.start(self.out, self.prefix)
        self.say(f"started {child.name} (pid {child.pid})")
        if ready_url is None:
            return
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            self.raise_if_a_child_died()
            with contextlib.suppress(requests.RequestException):
                if requests.get(ready_url, timeout=1).status_code == 200:
                    return
            self.stop_requested.wait(0.2)
        if not self.stop_requested.is_set():
            raise ChildDied(f"{child.name} did not answer {ready_url} in time")

    def raise_if_a_child_died(self) -> None:
        for child in self.children:
            if child.popen is not None and child.exit_code() is not None:
                raise ChildDied(
                    f"{child.name} (pid {child.pid}) exited with code {child.exit_code()}"
                )

    def supervise(self) -> None:
        """Until a stop is requested or a child dies."""
        while not self.stop_requested.wait(0.5):
            self.raise_if_a_child_died()

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.popen is not None:
                code = child.stop()
                self.say(f"stopped {child.name} (exit code {code})")
