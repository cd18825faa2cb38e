"""Support for the agent tests: a controllable clock, a small HTTP server standing in for a
controller that holds its watches, and an agent's state written as an earlier run left it."""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.processes import free_port


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingStop(threading.Event):
    """A stop flag whose wait() advances the fake clock instead of sleeping, records every
    timeout, and sets itself after `limit` waits, so that AgentDaemon.run() ends on its own."""

    def __init__(self, clock: FakeClock, limit: int) -> None:
        super().__init__()
        self.clock = clock
        self.limit = limit
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if self.is_set():
            return True
        self.waits.append(timeout)
        self.clock.advance(timeout or 0)
        if len(self.waits) >= self.limit:
            self.set()
        return self.is_set()


class _Server:
    """A ThreadingHTTPServer on a fixed port that can be stopped and started again."""

    handler_class: type[BaseHTTPRequestHandler]

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        owner = self

        class Handler(self.handler_class):
            server_owner = owner

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _QuietHandler(BaseHTTPRequestHandler):
    # One request per connection: a stopped server must look down to clients at once.
    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def send_json(self, status: int, data) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def subprocess_env(tmp_path: Path, **extra: str) -> dict:
    """Environment for a manage.py subprocess: settings it needs, nothing from the shell's
    agent or worker variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"CONTROLLER_URL", "WORKER_URL", "REGISTRATION_TOKEN", "AGENT_STATE_DIR"}
    }
    env.update(
        {
            "SECRET_KEY": env.get("SECRET_KEY", "test-only-not-secret"),
            "VAR_DIR": str(tmp_path / "var"),
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "INFO",
        }
    )
    env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


class StubControllerHandler(_QuietHandler):
    def do_GET(self):
        controller = self.server_owner
        path, _, query = self.path.partition("?")
        controller.requests.append((path, query))
        controller.received.set()
        if path == "/config/version":
            params = dict(item.split("=", 1) for item in query.split("&") if "=" in item)
            if "wait" in params and controller.hold:
                time.sleep(min(int(params["wait"]), controller.hold))
            self.send_json(200, {"version": 0, "pooling_interval": None})
        else:
            self.send_json(404, {"detail": "not found"})

    def do_POST(self):
        controller = self.server_owner
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        controller.requests.append((self.path, ""))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


class StubController(_Server):
    """A controller without any config that holds a watch for up to `hold` seconds."""

    handler_class = StubControllerHandler

    def __init__(self, hold: float = 0.0) -> None:
        super().__init__()
        self.hold = hold
        self.requests: list[tuple[str, str]] = []
        self.received = threading.Event()


def write_credentials(state_dir: Path, agent_id: str = "00000000-0000-0000-0000-000000000001"):
    """State of an agent that registered earlier (for controllers that are stubs or down)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "credentials.json"
    path.write_text(json.dumps({"agent_id": agent_id, "agent_token": "agt_test"}))
    path.chmod(0o600)


def write_cached_config(state_dir: Path, config_url: str, version: int = 3) -> dict:
    config = {
        "config_url": config_url,
        "pooling_interval": 30,
        "version": version,
        "uuid": "6f1c1c4e-7a55-4d8b-9d8e-0c1b7b2a9e11",
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "config.json").write_text(json.dumps(config))
    return config
