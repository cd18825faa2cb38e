"""Real processes for tests: controllers, workers, agents and a private Redis, on free ports."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
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
        if not self._log.closed:
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


def start_controller(
    *, redis_url: str | None, workers: int = 1, port: int | None = None, **env: str
) -> tuple[Process, str]:
    """`run_controller` on the test database; `port` restarts one where a stopped one was."""
    port = port or free_port()
    extra = {"DATABASE_URL": env.pop("DATABASE_URL", None) or test_database_url(), **env}
    if redis_url:
        extra["REDIS_URL"] = redis_url
    process = Process(
        manage("run_controller", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)),
        base_env(**extra),
        "controller",
    )
    return process, wait_for_health(process, f"http://127.0.0.1:{port}", "/healthz", 30)


def wait_for_health(process: Process, url: str, path: str, timeout: float) -> str:
    """Wait until `url` + `path` answers 200; `url`. A process that does not get there is
    stopped, and its output is in the failure."""
    try:
        wait_until(
            lambda: requests.get(url + path, timeout=1).status_code == 200,
            timeout=timeout,
            message=f"{process.name} on {url}",
        )
    except AssertionError:
        process.stop()
        raise AssertionError(f"{process.name} did not start:\n{process.output()}") from None
    return url


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


# Workers, agents and a private PostgreSQL, for the end-to-end suite ----------------------------


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    def listening() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout=timeout, message=f"port {port}")


def start_worker(internal_key: str, *, port: int | None = None, **env: str) -> tuple[Process, str]:
    """`run_worker` on a free port (or the port of a worker it replaces)."""
    port = port or free_port()
    # The suite's upstreams listen on 127.0.0.1, which a worker refuses by default; None
    # leaves a setting unset, to see its default.
    env.setdefault("WORKER_BLOCK_PRIVATE_UPSTREAMS", "0")
    env = {name: value for name, value in env.items() if value is not None}
    process = Process(
        manage("run_worker", "--bind", f"127.0.0.1:{port}"),
        base_env(INTERNAL_KEY=internal_key, **env),
        "worker",
    )
    return process, wait_for_health(process, f"http://127.0.0.1:{port}", "/health", 20)


def start_agent(
    controller_url: str,
    worker_urls: list[str],
    state_dir: Path,
    *,
    internal_key: str,
    registration_token: str | None = None,
    **env: str,
) -> Process:
    """`run_agent` holding watches on `controller_url`; its state (credentials, cache) in
    `state_dir`, so a restarted agent is the same agent."""
    args = ["run_agent", "--controller-url", controller_url, "--state-dir", str(state_dir)]
    for url in worker_urls:
        args += ["--worker-url", url]
    extra = {"INTERNAL_KEY": internal_key, **env}
    if registration_token:
        extra["REGISTRATION_TOKEN"] = registration_token
    return Process(manage(*args), base_env(**extra), "agent")


class PostgresCluster:
    """A private PostgreSQL cluster in a temporary directory, on a free port, that a test may
    stop and start while the controller runs. initdb refuses to run as root, so as root the
    cluster belongs to the `postgres` account."""

    BINDIR = Path("/usr/lib/postgresql/15/bin")

    @classmethod
    def available(cls) -> bool:
        return all(
            shutil.which(name) or (cls.BINDIR / name).exists() for name in ("initdb", "pg_ctl")
        )

    def __init__(self) -> None:
        self.initdb = shutil.which("initdb") or str(self.BINDIR / "initdb")
        self.pg_ctl = shutil.which("pg_ctl") or str(self.BINDIR / "pg_ctl")
        self.directory = Path(tempfile.mkdtemp(prefix="e2e-postgres-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            # The account must reach its directory: pytest's tmp_path is private to root.
            shutil.chown(self.directory, "postgres")
        self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.directory / "postgres.log")
        self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
