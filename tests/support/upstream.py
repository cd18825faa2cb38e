"""The upstream stub: a local HTTP server in a thread standing in for a config_url, with one
path per kind of answer (text, JSON, 404, 500, slow, big, redirects)."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
