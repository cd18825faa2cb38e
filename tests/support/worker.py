"""The worker in tests: as a real process, and called in-process as a WSGI app; signed pushes."""

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import requests

from protocol import signing
from tests.support.processes import ROOT, free_port, listens_on

KEY = "test-internal-key-0123456789abcdef"
# A database nobody listens on: a worker that touched the database would fail at once.
NO_DATABASE_URL = "postgres://nobody@127.0.0.1:1/none"
# The worker's counter of POST /config requests (every outcome).
PUSH_METRIC = "worker_config_pushes_total"


def config_body(version: int = 1, url: str = "http://127.0.0.1:9/", **changes) -> dict:
    body = {
        "config_url": url,
        "pooling_interval": 60,
        "version": version,
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"v{version}")),
    }
    body.update(changes)
    return body


def signed_headers(body: bytes, key: str = KEY, now: float | None = None) -> dict[str, str]:
    return {
        "X-Signature": signing.sign(body, key, now=now),
        "Content-Type": "application/json",
    }


# The worker as a real process


class WorkerProcess:
    """`manage.py run_worker` in a subprocess on a free port; always stopped on exit. It can be
    stopped and started again on the same port, and counts the pushes it took across restarts."""

    def __init__(
        self,
        tmp_path: Path,
        env: dict[str, str | None] | None = None,
        port: int | None = None,
        bind_flag: bool = True,
        key: str = KEY,
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.key = key
        self.log_path = tmp_path / f"worker-{self.port}.log"
        self.env = worker_env(tmp_path, {"INTERNAL_KEY": key, **(env or {})})
        self.args = [sys.executable, "manage.py", "run_worker"]
        if bind_flag:
            self.args += ["--bind", f"127.0.0.1:{self.port}"]
        self.process: subprocess.Popen | None = None
        self._log = None
        self._pushes_before = 0

    def start(self) -> "WorkerProcess":
        """Start the process and return once it answers GET /health."""
        # Appended to, so that a restarted worker's log keeps what came before.
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}: {self.log()}")
            try:
                answered = requests.get(self.base_url + "/health", timeout=0.5).status_code
                # Only this process's answer counts, not another program's on the same port.
                if answered == 200 and listens_on(self.process.pid, self.port):
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise AssertionError(f"worker not ready within {timeout} s: {self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._pushes_before += self._metric_pushes()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def url(self, path: str) -> str:
        return self.base_url + path

    def push(self, body: dict, key: str | None = None) -> requests.Response:
        raw = json.dumps(body).encode()
        headers = signed_headers(raw, key or self.key)
        return requests.post(self.url("/config"), data=raw, headers=headers, timeout=10)

    def _metric_pushes(self) -> int:
        try:
            text = requests.get(self.url("/metrics"), timeout=5).text
        except requests.RequestException:
            return 0
        total = 0.0
        for line in text.splitlines():
            if line.startswith(PUSH_METRIC) and not line.startswith(PUSH_METRIC + "_created"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    @property
    def pushes(self) -> int:
        """POST /config requests this worker answered (every outcome), across restarts."""
        return self._pushes_before + self._metric_pushes()

    def version(self) -> int | None:
        return requests.get(self.url("/health"), timeout=5).json()["config_version"]

    def hit(self) -> requests.Response:
        return requests.get(self.url("/hit"), timeout=10)

    def __enter__(self) -> "WorkerProcess":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def worker_env(tmp_path: Path, overrides: dict[str, str | None] | None = None) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("WORKER_") and name not in ("INTERNAL_KEY", "REDIS_URL")
    }
    env.update(
        SECRET_KEY="test-only-worker-secret",
        INTERNAL_KEY=KEY,
        DATABASE_URL=NO_DATABASE_URL,
        VAR_DIR=str(tmp_path / "var"),
        PYTHONUNBUFFERED="1",
        DEBUG="0",
        # The tests' upstreams listen on 127.0.0.1, which a worker refuses by default.
        WORKER_BLOCK_PRIVATE_UPSTREAMS="0",
    )
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


# In-process WSGI calls


class WsgiResult:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status_code = int(status.split(" ", 1)[0])
        self.status = status
        self.headers = {name.lower(): value for name, value in headers}
        self.body = body

    def json(self):
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)


def call(
    app,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    content_length: bool = True,
    extra_environ: dict | None = None,
) -> WsgiResult:
    """Call the WSGI `app` the way a server would, and collect the answer."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "wsgi.input": io.BytesIO(body),
        "REMOTE_ADDR": "127.0.0.1",
    }
    if content_length and body:
        environ["CONTENT_LENGTH"] = str(len(body))
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        environ[key] = value
    environ.update(extra_environ or {})
    setup_testing_defaults(environ)
    captured = {}

    def start_response(status, response_headers, exc_info=None):
        captured["status"] = status
        captured["headers"] = response_headers

    chunks = app(environ, start_response)
    return WsgiResult(captured["status"], captured["headers"], b"".join(chunks))


def push(app, body: dict | bytes, headers: dict[str, str] | None = None) -> WsgiResult:
    """POST /config to an in-process app, signed with KEY unless `headers` are given."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(app, "POST", "/config", raw, signed_headers(raw) if headers is None else headers)
