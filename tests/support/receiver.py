"""A webhook receiver: a local HTTP server in a thread that keeps every POST it gets (when,
headers, body) and answers each with the next status of a script (200 once the script is
spent), optionally after a delay."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook


class Received:
    """One POST as it arrived."""

    def __init__(self, at: float, headers: dict[str, str], body: bytes) -> None:
        self.at = at
        self.headers = headers
        self.body = body

    @property
    def event(self) -> dict:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str) -> dict:
        """The event, once its signature checks out with `secret` (standardwebhooks)."""
        return Webhook(secret).verify(self.body, self.headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def do_POST(self):  # noqa: N802 - http.server's naming
        receiver: Receiver = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, delay = receiver.next_answer(self.path)
        receiver.begun[self.path] = receiver.begun.get(self.path, 0) + 1
        if delay:
            time.sleep(delay)
        receiver.keep(self.path, Received(time.monotonic(), headers, body))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Receiver:
    """`script` is the statuses of the first answers; `delay` holds every answer that long.
    Paths share the server and are counted apart (`received(path)`)."""

    def __init__(self) -> None:
        self.script: dict[str, list[int]] = {}
        self.delays: dict[str, float] = {}
        # POSTs read whole, by path, counted before their answer's delay.
        self.begun: dict[str, int] = {}
        self._received: dict[str, list[Received]] = {}
        self._lock = threading.Lock()
        self.arrived = threading.Condition(self._lock)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def answer(self, path: str, *statuses: int, delay: float = 0.0) -> None:
        with self._lock:
            self.script[path] = list(statuses)
            self.delays[path] = delay

    def next_answer(self, path: str) -> tuple[int, float]:
        with self._lock:
            script = self.script.get(path) or []
            return (script.pop(0) if script else 200), self.delays.get(path, 0.0)

    def keep(self, path: str, received: Received) -> None:
        with self.arrived:
            self._received.setdefault(path, []).append(received)
            self.arrived.notify_all()

    def received(self, path: str = "/hook") -> list[Received]:
        with self._lock:
            return list(self._received.get(path, []))

    def wait_for(self, count: int, path: str = "/hook", timeout: float = 10.0) -> list[Received]:
        """The first `count` POSTs to `path`, once they have arrived (AssertionError after
        `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self._received.get(path, [])) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self._received.get(path, []))} of {count} POSTs arrived"
                self.arrived.wait(left)
            return list(self._received[path])

    def __enter__(self) -> "Receiver":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
