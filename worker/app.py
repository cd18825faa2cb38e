"""The worker's WSGI application: holds the configuration the agent pushed and serves GET /hit.

It counts the outcome of every hit per config version (GET /health shows the counts; the agent
reports them, and the controller halts a rollout whose new version fails), and fetches a URL on
request without applying it (POST /preflight), so a URL can be tried before it ships.

Built from plain values, so it runs without Django settings or a database;
`manage.py run_worker` reads the settings and serves it with granian (worker/server.py).
"""

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import NamedTuple

from protocol import signing
from protocol.config import InvalidFields
from protocol.rules import InvalidConfig, check_config_url
from worker.config import ConfigStore, MalformedPush, StaleVersion, parse_push
from worker.metrics import WorkerMetrics
from worker.upstream import (
    UpstreamBlocked,
    UpstreamClient,
    UpstreamError,
    UpstreamTimeout,
    UpstreamTooLarge,
    without_query,
)

logger = logging.getLogger(__name__)

MAX_PUSH_BYTES = 64 * 1024
INTERNAL_KEY_HEADER = "HTTP_X_INTERNAL_KEY"
SIGNATURE_HEADER = "HTTP_X_SIGNATURE"
JSON = "application/json"
# Statuses whose answers carry no body, and so no Content-Length either.
BODILESS_STATUSES = frozenset({204, 304})
# Hit counts are kept for this many versions, the newest: a rollout judges the new version
# against the one before it, and the agent reads the counts every few seconds.
HIT_VERSIONS_KEPT = 16


class HitCounts:
    """How many hits each config version served well (upstream below 500) and badly (upstream
    5xx, or the worker's own 502 or 504), since the process started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, list[int]] = {}

    def add(self, version: int, ok: bool) -> None:
        with self._lock:
            counts = self._counts.get(version)
            if counts is None:
                counts = self._counts[version] = [0, 0]
                if len(self._counts) > HIT_VERSIONS_KEPT:
                    del self._counts[min(self._counts)]
            counts[0 if ok else 1] += 1

    def as_dict(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                str(version): {"ok": ok, "failed": failed}
                for version, (ok, failed) in sorted(self._counts.items())
            }


class Response(NamedTuple):
    status: int
    body: bytes
    headers: list[tuple[str, str]]


class HttpError(Exception):
    """A request the worker refuses; `body` is the JSON answer."""

    def __init__(self, status: int, body: dict, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(body)
        self.status = status
        self.body = body
        self.headers = list(headers)


class Unauthorized(HttpError):
    def __init__(self, reason: str) -> None:
        super().__init__(401, {"detail": reason})
        self.reason = reason


def json_response(status: int, data: dict, headers: Iterable[tuple[str, str]] = ()) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(status, body, [("Content-Type", JSON), *headers])


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _client(environ: dict) -> str:
    return environ.get("REMOTE_ADDR") or "unknown client"


class WorkerApp:
    """The WSGI callable. One instance per process; safe to call from many threads at once."""

    def __init__(
        self,
        *,
        internal_key: str,
        require_signature: bool = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        max_body_bytes: int = 10 * 1024 * 1024,
        block_private_upstreams: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not internal_key:
            raise ValueError("internal_key must not be empty")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("connect_timeout and read_timeout must be positive")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        self._internal_key = internal_key
        self._internal_key_bytes = internal_key.encode()
        self.require_signature = require_signature
        self.clock = clock
        self.started = time.monotonic()
        self.store = ConfigStore()
        self.seen_signatures = signing.SeenSignatures()
        self.metrics = WorkerMetrics()
        self.hit_counts = HitCounts()
        self.upstream = UpstreamClient(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_body_bytes=max_body_bytes,
            block_private=block_private_upstreams,
        )
        self.routes: dict[str, dict[str, Callable[[dict], Response]]] = {
            "/health": {"GET": self.health},
            "/config": {"GET": self.get_config, "POST": self.push_config},
            "/hit": {"GET": self.hit},
            "/preflight": {"POST": self.preflight},
            "/metrics": {"GET": self.render_metrics},
        }

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        response = self.dispatch(environ)
        headers = response.headers
        if response.status in BODILESS_STATUSES:
            body = b""
        else:
            body = response.body
            headers = [*headers, ("Content-Length", str(len(body)))]
        start_response(_status_line(response.status), headers)
        return [body]

    def dispatch(self, environ: dict) -> Response:
        methods = self.routes.get(environ.get("PATH_INFO") or "/")
        if methods is None:
            return json_response(404, {"detail": "Not found."})
        handler = methods.get(environ.get("REQUEST_METHOD", ""))
        if handler is None:
            allowed = ", ".join(methods)
            return json_response(
                405,
                {"detail": f"Method {environ.get('REQUEST_METHOD')!r} not allowed; use {allowed}."},
                [("Allow", allowed)],
            )
        try:
            return handler(environ)
        except HttpError as exc:
            return json_response(exc.status, exc.body, exc.headers)
        except Exception:
            # A bug, not an input: say so in the log with its traceback, and answer in JSON.
            logger.exception(
                "unexpected error serving %s %s",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
            )
            return json_response(500, {"detail": "Internal error."})

    # GET /health

    def health(self, environ: dict) -> Response:
        held = self.store.current
        return json_response(
            200,
            {
                "status": "ok",
                "config_version": held.version if held else None,
                "uptime_s": round(time.monotonic() - self.started, 3),
                "hits": self.hit_counts.as_dict(),
            },
        )

    # GET /config

    def get_config(self, environ: dict) -> Response:
        held = self.store.current
        if held is None:
            raise HttpError(404, {"detail": "No configuration has been pushed yet."})
        return json_response(200, held.as_dict())

    # POST /config

    def push_config(self, environ: dict) -> Response:
        try:
            body = self._authenticated_body(environ)
        except Unauthorized as exc:
            self.metrics.pushes.labels(result="unauthorized").inc()
            logger.warning("push refused from %s: %s", _client(environ), exc.reason)
            raise
        except HttpError as exc:
            result = "too_large" if exc.status == 413 else "invalid"
            self.metrics.pushes.labels(result=result).inc()
            logger.warning("push refused from %s: %s", _client(environ), exc.body["detail"])
            raise
        try:
            pushed = parse_push(body)
        except MalformedPush as exc:
            self.metrics.pushes.labels(result="invalid").inc()
            logger.warning("push refused from %s: %s", _client(environ), exc)
            raise HttpError(400, {"detail": str(exc)}) from None
        except InvalidFields as exc:
            self.metrics.pushes.labels(result="invalid").inc()
            logger.warning("push refused from %s: invalid %s", _client(environ), exc)
            raise HttpError(400, exc.errors) from None
        try:
            applied, held, before = self.store.apply(pushed)
        except StaleVersion as exc:
            self.metrics.pushes.labels(result="stale").inc()
            logger.warning("push refused from %s: %s", _client(environ), exc)
            raise HttpError(
                409,
                {
                    "detail": f"Version {exc.offered} is older than the version held, {exc.held}.",
                    "version": exc.held,
                },
            ) from None
        if applied:
            self.metrics.pushes.labels(result="applied").inc()
            self.metrics.config_version.set(held.version)
            logger.info(
                "config applied v%d (was %s), pooling_interval %d s",
                held.version,
                f"v{before.version}" if before else "none",
                held.pooling_interval,
            )
        else:
            self.metrics.pushes.labels(result="unchanged").inc()
            if (held.config_url, held.pooling_interval, held.uuid) != (
                pushed.config_url,
                pushed.pooling_interval,
                pushed.uuid,
            ):
                logger.warning(
                    "push of v%d differs from the v%d held; kept the one held",
                    pushed.version,
                    held.version,
                )
        return json_response(200, {"applied": applied, "version": held.version})

    def _authenticated_body(self, environ: dict) -> bytes:
        """The raw body, once the request proves it comes from the agent; raise otherwise.

        The plain key is checked before the body is read; a signature covers the body, so the
        body is read (capped) first and verified before anything parses it.
        """
        signature = environ.get(SIGNATURE_HEADER)
        if signature is not None:
            if not signature.isascii():
                raise Unauthorized("malformed X-Signature")
            body = _read_body(environ, MAX_PUSH_BYTES)
            try:
                signing.verify(signature, body, self._internal_key, now=self.clock())
                self.seen_signatures.remember(signature, now=self.clock())
            except signing.BadSignature as exc:
                raise Unauthorized(str(exc)) from None
            return body
        plain_key = environ.get(INTERNAL_KEY_HEADER)
        if plain_key is None:
            raise Unauthorized("missing X-Signature")
        if self.require_signature:
            raise Unauthorized("X-Signature is required; X-Internal-Key alone is not accepted")
        # Header values reach WSGI as latin-1 text; compare the bytes in constant time.
        try:
            given = plain_key.encode("latin-1")
        except UnicodeEncodeError:
            given = b""
        if not hmac.compare_digest(given, self._internal_key_bytes):
            raise Unauthorized("wrong X-Internal-Key")
        return _read_body(environ, MAX_PUSH_BYTES)

    # GET /hit

    def hit(self, environ: dict) -> Response:
        held = self.store.current
        if held is None:
            self.metrics.hits.labels(upstream_status="no_config").inc()
            raise HttpError(
                503,
                {"detail": "No configuration yet: the agent has not pushed one."},
                [("Retry-After", "5")],
            )
        version_header = ("X-Config-Version", str(held.version))
        started = time.perf_counter()
        try:
            upstream = self.upstream.fetch(held.config_url)
        except UpstreamError as exc:
            self.metrics.upstream_latency.observe(time.perf_counter() - started)
            kind, status = _upstream_failure(exc)
            self.metrics.hits.labels(upstream_status=kind).inc()
            self.hit_counts.add(held.version, ok=False)
            logger.warning("upstream error (v%d): %s", held.version, exc)
            return json_response(status, {"detail": str(exc)}, [version_header])
        self.metrics.upstream_latency.observe(time.perf_counter() - started)
        # A final answer is 2xx to 5xx; anything else (a 101 to a plain GET, say) cannot be
        # passed on as the answer to /hit.
        if not 200 <= upstream.status <= 599:
            self.metrics.hits.labels(upstream_status="invalid_status").inc()
            self.hit_counts.add(held.version, ok=False)
            logger.warning("upstream error (v%d): invalid status %d", held.version, upstream.status)
            return json_response(
                502,
                {"detail": f"upstream answered with invalid status {upstream.status}"},
                [version_header],
            )
        self.metrics.hits.labels(upstream_status=str(upstream.status)).inc()
        self.hit_counts.add(held.version, ok=upstream.status < 500)
        headers = [version_header]
        if upstream.content_type is not None:
            headers.append(("Content-Type", upstream.content_type))
        return Response(upstream.status, upstream.body, headers)

    # POST /preflight

    def preflight(self, environ: dict) -> Response:
        """Fetch a URL as /hit would (same rules, limits and address block) without applying it.

        Signed like POST /config: an open endpoint that fetches any URL would let anyone use
        the worker to reach what it can reach."""
        try:
            body = self._authenticated_body(environ)
        except Unauthorized as exc:
            logger.warning("preflight refused from %s: %s", _client(environ), exc.reason)
            raise
        config_url = _preflight_url(body)
        started = time.perf_counter()
        status, error = None, None
        try:
            status = self.upstream.fetch(config_url).status
        except UpstreamError as exc:
            error = str(exc)
        else:
            if not 200 <= status <= 599:
                error = f"upstream answered with invalid status {status}"
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        logger.info(
            "preflight of %s: %s in %.0f ms",
            without_query(config_url),
            error or f"HTTP {status}",
            elapsed_ms,
        )
        return json_response(200, {"status": status, "elapsed_ms": elapsed_ms, "error": error})

    # GET /metrics

    def render_metrics(self, environ: dict) -> Response:
        return Response(200, self.metrics.render(), [("Content-Type", self.metrics.content_type)])


def _preflight_url(body: bytes) -> str:
    """The config_url of a preflight body, checked by the config rules; HttpError 400 otherwise."""
    try:
        data = json.loads(body)
    except ValueError:
        raise HttpError(400, {"detail": "The body must be JSON."}) from None
    if not isinstance(data, dict):
        raise HttpError(400, {"detail": "The body must be a JSON object."})
    try:
        return check_config_url(data.get("config_url"))
    except InvalidConfig as exc:
        raise HttpError(400, {exc.field: [exc.message]}) from None


def _upstream_failure(exc: UpstreamError) -> tuple[str, int]:
    """The metric label and HTTP status for a failed fetch."""
    if isinstance(exc, UpstreamTimeout):
        return "timeout", 504
    if isinstance(exc, UpstreamTooLarge):
        return "too_large", 502
    if isinstance(exc, UpstreamBlocked):
        return "blocked", 502
    return "unreachable", 502


def _read_body(environ: dict, limit: int) -> bytes:
    """Read the request body, refusing one over `limit` bytes with 413 (before reading it when
    Content-Length says so)."""
    stream = environ["wsgi.input"]
    length_text = environ.get("CONTENT_LENGTH") or ""
    if length_text:
        if not length_text.isdigit():
            raise HttpError(400, {"detail": "Invalid Content-Length."})
        length = int(length_text)
        if length > limit:
            raise HttpError(413, {"detail": f"Body over {limit} bytes."})
        return stream.read(length)
    # Without Content-Length a body can only be read safely when the server marks where it ends
    # (chunked transfer); PEP 3333 forbids reading past the request otherwise.
    if environ.get("wsgi.input_terminated"):
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise HttpError(413, {"detail": f"Body over {limit} bytes."})
        return body
    return b""
