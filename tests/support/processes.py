"""Real processes for tests: controllers, workers, agents and a private Redis, on free ports."""

import contextlib
import os
import re
import secrets
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

from protocol.secrets import weakness

ROOT = Path(__file__).resolve().parents[2]


def _test_secret_key() -> str:
    """This run's key (`make test` makes one afresh), so that tokens signed in the test process
    are good in the controllers it starts; a fresh one when it is unset or weak. Never one
    written here: it would be published, and the controller refuses published keys."""
    key = os.environ.get("SECRET_KEY")
    if key and weakness("SECRET_KEY", key) is None:
        return key
    return f"key-{secrets.token_hex(32)}"  # letters first, so that YAML reads it as a string


TEST_SECRET_KEY = _test_secret_key()


def free_port() -> int:
    """A port free right now. Another program may take it before it is bound: the starters
    below try again on another port when that happens (see `start_listening`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def dead_port():
    """A port where nothing answers for as long as the block runs: bound here and never
    listened on, so every connection is refused and no other program can listen there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


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


class ProcessExited(AssertionError):
    """The process a wait was for exited: what answered, if anything, was not it."""


def wait_until(
    check,
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "",
    process: "Process | None" = None,
):
    """Wait until `check()` is true. With `process`, stop as soon as that process has exited:
    an answer on its port would come from another program."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise ProcessExited(
                f"{process.name} exited with {process.popen.returncode} while waiting: "
                f"{message}\n{process.output()[-3000:]}"
            )
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


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # local address HEX_IP:HEX_PORT, state 0A = LISTEN, inode in field 9
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(fields[9])
    return inodes


def _process_tree(pid: int) -> list[int]:
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return tree


def listens_on(pid: int, port: int) -> bool:
    """Whether the process `pid`, or one of its children, holds the listening socket of `port`:
    an answer on the port is then its answer, not another program's."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    for each in _process_tree(pid):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{each}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return True
    return False


def connections_per_process(pid: int, port: int) -> dict[int, int]:
    """Established connections to `port` that each process of `pid`'s tree holds (their server
    ends): how the processes of a server share its clients."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # local address HEX_IP:HEX_PORT, state 01 = ESTABLISHED, inode in field 9
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(f"socket:[{fields[9]}]")
    counts = {}
    for each in _process_tree(pid):
        with contextlib.suppress(OSError):
            held = sum(1 for fd in Path(f"/proc/{each}/fd").iterdir() if _link(fd) in inodes)
            if held:
                counts[each] = held
    return counts


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def start_listening(
    start, port: int | None, health_path: str, name: str, timeout: float
) -> tuple["Process", str]:
    """Start a server with `start(port)` and wait until it answers `health_path` from a socket
    it holds itself, checking all along that it is still running (an answer from another
    program on the port does not count). On a port
    picked here, a server that lost its port to another program between the pick and its bind
    is started again on another; a port the caller named is never changed."""
    for attempt in range(3):
        chosen = port or free_port()
        process = start(chosen)
        url = f"http://127.0.0.1:{chosen}"
        try:
            wait_until(
                lambda url=url, chosen=chosen, process=process: (
                    requests.get(url + health_path, timeout=1).status_code == 200
                    and listens_on(process.popen.pid, chosen)
                ),
                timeout=timeout,
                message=f"{name} on {url}",
                process=process,
            )
            if process.alive():
                return process, url
        except AssertionError:
            pass
        process.stop()
        output = process.output()
        if port is None and attempt < 2 and "already in use" in output:
            continue
        raise AssertionError(f"{name} did not start:\n{output}")
    raise AssertionError(f"{name} did not start")


def start_controller(
    *, redis_url: str | None, workers: int = 1, port: int | None = None, **env: str
) -> tuple[Process, str]:
    """`run_controller` on the test database; `port` restarts one where a stopped one was."""
    extra = {"DATABASE_URL": env.pop("DATABASE_URL", None) or test_database_url(), **env}
    if redis_url:
        extra["REDIS_URL"] = redis_url

    def start(chosen: int) -> Process:
        return Process(
            manage("run_controller", "--bind", f"127.0.0.1:{chosen}", "--workers", str(workers)),
            base_env(**extra),
            "controller",
        )

    return start_listening(start, port, "/healthz", "controller", timeout=30)


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
    wait_until(
        lambda: _redis_ping(port), timeout=10, message="private redis-server", process=process
    )
    return process, f"redis://127.0.0.1:{port}/0", port


def restart_redis(port: int) -> Process:
    process = Process(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        dict(os.environ),
        "redis",
    )
    wait_until(
        lambda: _redis_ping(port),
        timeout=10,
        message="private redis-server restart",
        process=process,
    )
    return process


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# What a running controller counted


def server_errors(controller_url: str, *, except_status: str | None = None) -> int:
    """5xx answers the controller counted (`controller_requests_total`, every process of it),
    leaving out `except_status` where the scenario requires that answer."""
    text = requests.get(f"{controller_url}/metrics", timeout=10).text
    total = 0
    for line in text.splitlines():
        status = re.search(r'status="(5\d\d)"', line)
        if line.startswith("controller_requests_total{") and status and status[1] != except_status:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def watches_held(controller_url: str) -> int:
    """Watches the controller holds right now (`controller_watches_held`, every process)."""
    text = requests.get(f"{controller_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("controller_watches_held"):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


# Workers, agents and a private PostgreSQL, for the end-to-end suite ----------------------------


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    def listening() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout=timeout, message=f"port {port}")


def start_worker(internal_key: str, *, port: int | None = None, **env: str) -> tuple[Process, str]:
    """`run_worker` on a free port (or the port of a worker it replaces)."""

    # The suite's upstreams listen on 127.0.0.1, which a worker refuses by default; None
    # leaves a setting unset, to see its default.
    env.setdefault("WORKER_BLOCK_PRIVATE_UPSTREAMS", "0")
    env = {name: value for name, value in env.items() if value is not None}

    def start(chosen: int) -> Process:
        return Process(
            manage("run_worker", "--bind", f"127.0.0.1:{chosen}"),
            base_env(INTERNAL_KEY=internal_key, **env),
            "worker",
        )

    return start_listening(start, port, "/health", "worker", timeout=20)


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
