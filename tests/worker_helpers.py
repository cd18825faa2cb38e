"""Test doubles for the worker tests: an upstream HTTP server, the worker as a real process, and
in-process WSGI calls."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import requests

from worker import signing

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY = "test-internal-key-0123456789abcdef"
# A database nobody listens on: a worker that touched the database would fail at once.
NO_DATABASE_URL = "postgres://nobody@127.0.0.1:1/none"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


# The upstream


class _UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffer each answer into one write: headers and body sent apart would meet Nagle's
    # algorithm and the client's delayed ACK, and every response would take 40 ms.
    wbufsize = 256 * 1024

    def setup(self):
        super().setup()
        self.server.owner.connections += 1

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        server: UpstreamServer = self.server.owner
        server.requests += 1
        path, _, query = self.path.partition("?")
        if path == "/text":
            self._send(200, b"203.0.113.7\n", "text/plain; charset=utf-8")
        elif path == "/json":
            self._send(200, b'{"ok": true}', "application/json")
        elif path == "/missing":
            self._send(404, b"no such thing", "text/plain")
        elif path == "/broken":
            self._send(500, b"upstream failed", "text/html")
        elif path == "/bad-type":
            # Bytes that are not UTF-8 (nor printable ASCII) in the Content-Type value.
            self._send(200, b"raw", "text/plain; name=\xff\xfe")
        elif path == "/no-type":
            self._send(200, b"raw", None)
        elif path == "/empty":
            self._send(204, b"", None)
        elif path == "/switching":
            self.send_response(101)
            self.end_headers()
            self.close_connection = True
        elif path == "/slow":
            # Hold the answer until the test releases it (or 5 s pass).
            server.release.wait(5)
            self._send(200, b"late", "text/plain")
        elif path == "/big":
            self._send_big(int(query or "0"))
        elif path.startswith("/redirect/"):
            hops = int(path.rsplit("/", 1)[1])
            target = f"/redirect/{hops - 1}" if hops > 1 else "/text"
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"unknown test path", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str | None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_big(self, size: int) -> None:
        # No Content-Length: the worker has to stop reading at its cap on its own.
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = b"x" * 65536
        sent = 0
        try:
            while sent < size:
                part = chunk[: min(len(chunk), size - sent)]
                self.wfile.write(part)
                sent += len(part)
        except OSError:
            pass  # the worker hung up at its cap, as it should
        self.close_connection = True


class UpstreamServer:
    """A local HTTP server in a thread, standing in for the configured URL."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _UpstreamHandler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.release = threading.Event()
        self.requests = 0
        self.connections = 0
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "UpstreamServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# The worker as a real process


class WorkerProcess:
    """`manage.py run_worker` in a subprocess on a free port; always stopped on exit."""

    def __init__(
        self,
        tmp_path: Path,
        env: dict[str, str | None] | None = None,
        port: int | None = None,
        bind_flag: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"worker-{self.port}.log"
        self.env = worker_env(tmp_path, env)
        self.args = [sys.executable, "manage.py", "run_worker"]
        if bind_flag:
            self.args += ["--bind", f"127.0.0.1:{self.port}"]
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self) -> "WorkerProcess":
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.args, cwd=REPO_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def wait_ready(self, timeout: float = 20.0) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}: {self.log()}")
            try:
                if requests.get(self.base_url + "/health", timeout=0.5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise AssertionError(f"worker not ready within {timeout} s: {self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
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

    def push(self, body: dict, key: str = KEY) -> requests.Response:
        raw = json.dumps(body).encode()
        return requests.post(self.url("/config"), data=raw, headers=signed_headers(raw, key))

    def __enter__(self) -> "WorkerProcess":
        try:
            return self.start().wait_ready()
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
