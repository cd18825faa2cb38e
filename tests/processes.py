"""Real processes for tests: controllers, workers, agents and a private Redis, on free ports."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET_KEY = "test-only-not-secret-key-0123456789abcdefghijklmnop"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    """A DATABASE_URL naming the test database, for processes that must share its state."""
    db = connection.settings_dict
    if connection.vendor != "postgresql":
        raise RuntimeError("process tests need PostgreSQL")
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


class Process:
    """A child process that is always stopped, with its output kept for failure messages."""

    def __init__(self, args: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.log_path = (
            Path(os.environ.get("TMPDIR", "/tmp"))
            / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        )
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


def wait_until(check, timeout: float = 15.0, interval: float = 0.05, message: str = ""):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (requests.RequestException, OSError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting: {message} (last error: {last_error})")


def base_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "PYTEST_CURRENT_TEST"}
    }
    env.update(SECRET_KEY=TEST_SECRET_KEY, PYTHONUNBUFFERED="1", LOG_LEVEL="INFO")
    env.update(extra)
    return env


def manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


def start_controller(*, redis_url: str | None, workers: int = 1, **env: str) -> tuple[Process, str]:
    port = free_port()
    extra = {"DATABASE_URL": test_database_url(), **env}
    if redis_url:
        extra["REDIS_URL"] = redis_url
    process = Process(
        manage("run_controller", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)),
        base_env(**extra),
        "controller",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: requests.get(f"{url}/healthz", timeout=1).status_code == 200,
            timeout=30,
            message=f"controller on {url}",
        )
    except AssertionError:
        process.stop()
        raise AssertionError(f"controller did not start:\n{process.output()}") from None
    return process, url


def start_redis() -> tuple[Process, str, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    process = Process(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        dict(os.environ),
        "redis",
    )
    wait_until(lambda: _redis_ping(port), timeout=10, message="private redis-server")
    return process, f"redis://127.0.0.1:{port}/0", port


def restart_redis(port: int) -> Process:
    process = Process(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        dict(os.environ),
        "redis",
    )
    wait_until(lambda: _redis_ping(port), timeout=10, message="private redis-server restart")
    return process


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
