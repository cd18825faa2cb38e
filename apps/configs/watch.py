"""The version watch: `GET /config/version?version=KNOWN&wait=SECONDS` as a bare ASGI endpoint.

Thousands of agents hold this request open, and a change must answer them all at once. Django's
request path costs about a millisecond per woken request, so this one endpoint is served here,
in front of Django: it shares the authentication, the cached state and the query rules with the
rest of the API and skips only the per-request middleware and view machinery.

The requests wait on this process's Hub (hub.py), which hears of every change. GET /config/stream
is the same wait on one long-lived connection (Server-Sent Events): every new target version is
an event on it, without a new request after each change. The same front takes GET /config/agent
and POST /agent/heartbeat, the other two requests every agent makes
(heartbeats are written in batches: apps/agents/heartbeats.py).
"""

import asyncio
import functools
import json
import logging
import random
import time

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.db import DatabaseError
from django.http import QueryDict
from django.http.request import split_domain_port, validate_host

from apps.agents.auth import (
    active_agent,
    find_agent,
    find_agents,
    note_last_seen_queued,
    remembered_agent,
    token_digest,
    touch_last_seen,
)
from apps.agents.heartbeats import HeartbeatRecorder, InvalidHeartbeat, check_heartbeat
from apps.agents.labels import ignore_reported_labels
from apps.agents.models import Agent
from apps.agents.services import record_heartbeats
from apps.agents.tokens import bearer_token
from apps.configs.errors import NoConfigYet
from apps.configs.hub import Hub, Waiter, stamp, with_database
from apps.configs.models import ConfigVersion
from apps.configs.serializers import ConfigSerializer, VersionQuerySerializer
from apps.configs.services import (
    get_current_state,
    read_for_agent,
)
from apps.ops import metrics
from apps.rollouts.targets import target_of
from controller_site.errors import DATABASE_DOWN, is_database_failure

logger = logging.getLogger(__name__)

WATCH_PATH = "/config/version"
STREAM_PATH = "/config/stream"
# A comment line this often keeps an idle stream open through proxies that cut silent ones.
KEEP_ALIVE_SECONDS = 15
KEEP_ALIVE = b": keep-alive\n\n"
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]
# Sent first on every stream: a client that lost it (the controller restarting) retries in 1 s.
STREAM_RETRY = b"retry: 1000\n\n"
CONFIG_PATH = "/config/agent"
HEARTBEAT_PATH = "/agent/heartbeat"
# The longest wait a watch may ask for (VersionQuerySerializer says the same to a client).
WAIT_MAX = 60
# The fields of a version answer, in the order they are sent.
STATE_FIELDS = ("version", "pooling_interval", "config_url", "uuid")
REFUSED_AGENT = "Invalid or revoked agent token."
WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="agent"')


_record_heartbeats = with_database(record_heartbeats)
_find_agents = with_database(find_agents)


@with_database
def _touch_and_read(agent: Agent) -> dict:
    """Note the agent's contact and read the current state, in one hop to a worker thread."""
    touch_last_seen(agent)
    return get_current_state()


@with_database
def _config_for_agent(token: str | None, if_none_match: str | None):
    """(status, body, extra headers) for GET /config/agent, in one hop to a worker thread."""
    agent = find_agent(token) if token else None
    if agent is None:
        return 401, {"detail": REFUSED_AGENT}, [WWW_AUTHENTICATE]
    touch_last_seen(agent)
    try:
        version, etag, unchanged = read_for_agent(if_none_match, agent)
    except NoConfigYet as refused:
        return 404, {"detail": refused.detail}, []
    headers = [(b"etag", etag.encode())]
    if unchanged:
        return 304, None, headers
    return 200, config_body(version), headers


@functools.lru_cache(maxsize=8)
def config_body(version: int) -> bytes:
    """The JSON of one version; a version never changes once made, so it is kept."""
    config = ConfigVersion.objects.get(version=version)
    return json.dumps(ConfigSerializer(config).data).encode()


class WatchEndpoint:
    """ASGI app for what every agent calls: GET /config/version (the watch), GET /config/agent
    and POST /agent/heartbeat; everything else goes to `fallback` (Django)."""

    def __init__(self, fallback) -> None:
        self.fallback = fallback
        self.hub = Hub()
        self.heartbeats = HeartbeatRecorder(
            write=_record_heartbeats,
            lookup=_find_agents,
            flush_seconds=settings.HEARTBEAT_FLUSH_SECONDS,
            batch_size=settings.HEARTBEAT_BATCH_SIZE,
        )

    @markcoroutinefunction
    def __call__(self, scope, receive, send):
        # A plain function that hands back its handler's coroutine: each of the thousands of
        # held watches keeps one coroutine frame fewer alive (a frame is some 300 bytes).
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "GET" and path == WATCH_PATH:
                return self._watch(scope, receive, send)
            if method == "GET" and path == STREAM_PATH:
                return self._stream(scope, receive, send)
            if method == "GET" and path == CONFIG_PATH:
                return self._measured(self._config, scope, receive, send)
            if method == "POST" and path == HEARTBEAT_PATH:
                return self._measured(self._heartbeat, scope, receive, send)
        elif scope["type"] == "lifespan":
            return self._lifespan(receive, send)
        return self.fallback(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.hub.start()
                self.heartbeats.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.hub.stop()
                # After the server stopped taking requests: the last reports are written.
                await self.heartbeats.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _ensure_started(self) -> None:
        # Servers without lifespan support (or tests calling the app directly) start it here.
        if self.hub.loop is None:
            await self.hub.start()
        self.heartbeats.start()

    async def _measured(self, handler, scope, receive, send) -> None:
        # Django's metrics middleware never sees these endpoints, so they are counted here.
        started = time.perf_counter()
        status = "disconnected"

        async def counted_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = _refusal(scope)
            if refusal is not None:
                await _respond(counted_send, *refusal)
            else:
                await handler(scope, receive, counted_send)
        finally:
            metrics.observe_request(
                scope["path"], scope["method"], status, time.perf_counter() - started
            )

    async def _authenticate_and_read(self, token: str | None) -> tuple[Agent | None, dict | None]:
        """The active agent of `token` and the current state. A token missing from the
        process's memory is looked up with every other one missing at the same moment, as for
        heartbeats: after a change, or when the memory's trust lapses under load, thousands of
        agents watch again at once, and one query each made the fleet's reports wait for them."""
        digest = token_digest(token) if token else None
        if digest is None:
            return None, None
        known, agent = remembered_agent(digest)
        if not known:
            agent = await self.heartbeats.find(digest)
        agent = active_agent(agent, digest)
        if agent is None:
            return None, None
        return agent, await _touch_and_read(agent)

    async def _heartbeat(self, scope, receive, send) -> None:
        """POST /agent/heartbeat: checked here, answered 204, written with the next batch."""
        await self._ensure_started()
        body = await _read_body(receive, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        if body is None:
            return  # the client left
        media_type = (_header(scope, b"content-type") or "application/json").split(";")[0]
        digest = token_digest(bearer_token(_header(scope, b"authorization")) or "")
        agent = None
        if digest is not None:
            known, agent = remembered_agent(digest)
            if not known:
                try:
                    agent = await self.heartbeats.find(digest)
                except DatabaseError as exc:
                    if not is_database_failure(exc):
                        raise  # a bug in a query, not an outage: 500, with its traceback
                    logger.error("heartbeat: database unavailable: %s", exc)
                    await _respond(send, 503, {"detail": DATABASE_DOWN})
                    return
            agent = active_agent(agent, digest)
        if agent is None:
            await _respond(send, 401, {"detail": REFUSED_AGENT}, [WWW_AUTHENTICATE])
        elif body is TOO_LARGE:
            await _respond(send, 413, {"detail": "The request body is too large."})
        elif media_type.strip().lower() != "application/json":
            await _respond(
                send, 415, {"detail": f'Unsupported media type "{media_type}" in request.'}
            )
        else:
            try:
                report = check_heartbeat(json.loads(body) if body else {})
            except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
                await _respond(send, 400, {"detail": f"JSON parse error - {exc}"})
                return
            except InvalidHeartbeat as exc:
                await _respond(send, 400, exc.errors)
                return
            self.heartbeats.add(str(agent.pk), report)
            note_last_seen_queued(str(agent.pk))
            # Labels are the operator's: reported ones that differ change nothing.
            ignore_reported_labels(agent, report["labels"])
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async def _config(self, scope, receive, send) -> None:
        """GET /config/agent: every agent fetches it right after a change, all at once."""
        token = bearer_token(_header(scope, b"authorization"))
        try:
            status, body, headers = await _config_for_agent(token, _header(scope, b"if-none-match"))
        except DatabaseError as exc:
            if not is_database_failure(exc):
                raise  # a bug in a query, not an outage: 500, with its traceback
            logger.error("config fetch: database unavailable: %s", exc)
            status, body, headers = 503, {"detail": DATABASE_DOWN}, []
        if isinstance(body, dict):
            payload, base = _response(json.dumps(body))
        else:
            payload, base = _response_bytes(body or b"")
            if status == 304:
                base = [(b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": base + headers})
        await send({"type": "http.response.body", "body": payload})

    async def _watch(self, scope, receive, send) -> None:
        """GET /config/version. Thousands are held at once, so everything a held one keeps
        alive counts: the Host check, the metrics and the wait are inline (no coroutine frame
        of their own), the query is read without a serializer in the usual case, and the
        served state and its answer are the hub's, shared by every watch."""
        started = time.perf_counter()
        status = "disconnected"
        try:
            refusal = _refusal(scope)
            if refusal is not None:
                status = await _respond(send, *refusal)
                return
            await self._ensure_started()
            known, wait, errors = watch_query(scope.get("query_string", b""))
            token = bearer_token(_header(scope, b"authorization"))

            # Subscribe before reading, so a change committed in between still wakes us.
            loop = asyncio.get_running_loop()
            waiter = Waiter(-1 if known is None else known, loop.create_future())
            self.hub.waiters.add(waiter)
            try:
                try:
                    agent, state = await self._authenticate_and_read(token)
                except DatabaseError as exc:
                    if not is_database_failure(exc):
                        raise  # a bug in a query, not an outage: 500, with its traceback
                    logger.error("watch: database unavailable: %s", exc)
                    status = await _respond(send, 503, {"detail": DATABASE_DOWN})
                    return
                if agent is None:
                    status = await _respond(
                        send, 401, {"detail": REFUSED_AGENT}, [WWW_AUTHENTICATE]
                    )
                    return
                if errors is not None:
                    status = await _respond(send, 400, errors)
                    return
                waiter.agent_id = str(agent.pk)
                if waiter.agent_id in self.hub.revoked:
                    # Revoked between the token's lookup and now: no cut will come.
                    status = await _respond(send, 401, {"detail": "This agent has been revoked."})
                    return
                waiter.labels = agent.labels or {}
                agent = None
                self.hub.advance(state)
                # A notification may have outrun the cache refresh: trust the newer of the two.
                # At the same stamp the hub's copy is the one kept, shared by every watch.
                if stamp(self.hub.latest) >= stamp(state):
                    state = self.hub.latest
                preflight = self.hub.take_preflight(waiter.agent_id)
                # During a rollout, the agent's own target: the new version or the previous one.
                answer = target_of(state, waiter.agent_id, waiter.labels)
                state = None
                if known is None or wait == 0 or answer["version"] != known or preflight:
                    status = await _respond(send, 200, answer, preflight=preflight)
                    return
                if waiter.future.done() and waiter.future.result()[0] == "changed":
                    # Woken before its agent was known, by a state already counted in the answer.
                    waiter.future = loop.create_future()
                if waiter.future.done():
                    outcome, news = waiter.future.result()
                else:
                    if not self.hub.held.hold(waiter):
                        status = await _respond(send, *WATCHES_FULL)
                        return
                    held = metrics.instruments().watches
                    held.inc()
                    # Up to wait/16 of jitter, so that many watches started together do not all
                    # come back at the same instant. A timer rather than a task per request
                    # keeps a wake-up cheap; a client that hangs up is noticed when its answer
                    # is written.
                    timer = loop.call_later(
                        wait + random.uniform(0, wait / 16), _expire, waiter.future
                    )
                    try:
                        outcome, news = await waiter.future
                    finally:
                        timer.cancel()
                        held.dec()
                        self.hub.held.release(waiter)
                if outcome == "revoked":
                    status = await _respond(send, 401, {"detail": "This agent has been revoked."})
                elif outcome == "shutdown":
                    # This process is stopping. A 200 with the unchanged state would tell the
                    # agent that the controller held the watch for its whole wait, and the
                    # agent would wait as long again before asking (up to a minute, with any
                    # change made meanwhile unseen); "unavailable" makes it retry with its
                    # backoff, and so find another process or the restarted one within seconds.
                    status = await _respond(
                        send,
                        503,
                        {"detail": "The controller is restarting; try again shortly."},
                        [(b"retry-after", b"1")],
                    )
                elif outcome == "replaced":
                    status = await _respond(send, *REPLACED)
                elif outcome == "preflight":
                    # The state the agent knows, unchanged, and the request: it watches again
                    # at once, so a change made now reaches it as fast as ever.
                    status = await _respond(send, 200, answer, preflight=news)
                else:
                    status = await _respond(send, 200, news if outcome == "changed" else answer)
            finally:
                self.hub.waiters.discard(waiter)
        finally:
            metrics.observe_request(WATCH_PATH, "GET", status, time.perf_counter() - started)

    async def _stream(self, scope, receive, send) -> None:
        """GET /config/stream: one event per new target version of the agent, on one
        connection. It is a watch that is re-armed after each answer: the same Waiter in the
        hub's set (woken by the same change, cut by the same revocation, released by the same
        shutdown), the same target rule and the same answer bytes, shared by every stream."""
        started = time.perf_counter()
        status = "disconnected"
        try:
            refusal = _refusal(scope)
            if refusal is not None:
                status = await _respond(send, *refusal)
                return
            await self._ensure_started()
            known, bad_id = last_event_id(_header(scope, b"last-event-id"))
            token = bearer_token(_header(scope, b"authorization"))
            loop = asyncio.get_running_loop()
            waiter = Waiter(-1, loop.create_future())
            # Subscribed before the read, as a watch: a change in between is not missed.
            self.hub.waiters.add(waiter)
            try:
                try:
                    agent, state = await self._authenticate_and_read(token)
                except DatabaseError as exc:
                    if not is_database_failure(exc):
                        raise  # a bug in a query, not an outage: 500, with its traceback
                    logger.error("stream: database unavailable: %s", exc)
                    status = await _respond(send, 503, {"detail": DATABASE_DOWN})
                    return
                if agent is None:
                    status = await _respond(
                        send, 401, {"detail": REFUSED_AGENT}, [WWW_AUTHENTICATE]
                    )
                    return
                if bad_id:
                    status = await _respond(
                        send, 400, {"detail": "Last-Event-ID must be a version number."}
                    )
                    return
                waiter.agent_id = str(agent.pk)
                if waiter.agent_id in self.hub.revoked:
                    # Revoked between the token's lookup and now: no cut will come.
                    status = await _respond(send, 401, {"detail": "This agent has been revoked."})
                    return
                waiter.labels = agent.labels or {}
                agent = None
                if not self.hub.held.hold(waiter):
                    status = await _respond(send, *WATCHES_FULL)
                    return
                self.hub.advance(state)
                state = None
                start = {"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS}
                await send(start)
                status = 200
                await _send_chunk(send, STREAM_RETRY)
                await self._stream_events(waiter, known, receive, send, loop)
            finally:
                self.hub.waiters.discard(waiter)
                self.hub.held.release(waiter)
        finally:
            metrics.observe_request(STREAM_PATH, "GET", status, time.perf_counter() - started)

    async def _stream_events(self, waiter: Waiter, known, receive, send, loop) -> None:
        """Send the agent's target whenever it differs from the last one sent, until the client
        leaves, the agent is revoked or the process stops."""
        open_streams = metrics.instruments().streams
        open_streams.inc()
        # The client's hang-up, seen as it happens (a write to a closed connection is silently
        # dropped by the server, so a quiet stream would otherwise be held forever).
        gone = asyncio.ensure_future(_until_disconnect(receive))
        gone.add_done_callback(lambda _: _settle(waiter.future, ("gone", None)))
        try:
            preflight = self.hub.take_preflight(waiter.agent_id)
            while True:
                # hub.latest is the newest state: whatever woke us, the answer is read from it.
                answer = target_of(self.hub.latest, waiter.agent_id, waiter.labels)
                if answer["version"] != known:
                    known = answer["version"]
                    await _send_chunk(send, stream_event(*(answer[f] for f in STATE_FIELDS)))
                if preflight:
                    await _send_chunk(send, preflight_event(preflight))
                    preflight = None
                if waiter.replaced:
                    await _send_chunk(send, REPLACED_EVENT)
                    return
                if self.hub.stopping or gone.done():
                    return
                waiter.known = known
                waiter.future = loop.create_future()
                if self.hub.latest_target_moved(waiter):
                    continue
                timer = loop.call_later(KEEP_ALIVE_SECONDS, _expire, waiter.future)
                try:
                    outcome, news = await waiter.future
                finally:
                    timer.cancel()
                if outcome == "timeout":
                    await _send_chunk(send, KEEP_ALIVE)
                elif outcome == "preflight":
                    preflight = news
                elif outcome == "revoked":
                    await _send_chunk(send, REVOKED_EVENT)
                    return
                elif outcome == "replaced":
                    await _send_chunk(send, REPLACED_EVENT)
                    return
                elif outcome in ("shutdown", "gone"):
                    return
        finally:
            open_streams.dec()
            gone.cancel()
            # The end of the body: the server closes the response (or already did).
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def watch_query(query_string: bytes) -> tuple[int | None, int, dict | None]:
    """(version known, wait, None) from the watch's query, or (None, 0, errors) for a 400.

    The usual query (`version=N&wait=S`, plain digits) is read directly; anything else goes
    through VersionQuerySerializer, the one statement of the rules and their messages."""
    fields: dict[bytes, int] = {}
    for part in query_string.split(b"&") if query_string else ():
        name, _, value = part.partition(b"=")
        if name in (b"version", b"wait"):
            if not value.isdigit() or len(value) > 9:
                break
            fields[name] = int(value)
        elif b"%" in name or b"+" in name:
            break  # an encoded name might be one of ours
    else:
        if fields.get(b"wait", 0) <= WAIT_MAX:
            return fields.get(b"version"), fields.get(b"wait", 0), None
    checked = VersionQuerySerializer(
        data=QueryDict(query_string.decode("latin-1") if query_string else "")
    )
    if not checked.is_valid():
        return None, 0, checked.errors
    return checked.validated_data.get("version"), checked.validated_data.get("wait", 0), None


def last_event_id(value: str | None) -> tuple[int, bool]:
    """(version the client holds, bad) from a Last-Event-ID header; -1 when it has none."""
    if value is None or value.strip() == "":
        return -1, False
    value = value.strip()
    if not value.isdigit() or len(value) > 9:
        return -1, True
    return int(value), False


@functools.lru_cache(maxsize=16)
def stream_event(
    version: int, pooling_interval: int | None, config_url: str | None, uuid: str | None
) -> bytes:
    """One version's event: its data are the bytes a watch answers, encoded once per version
    for every stream."""
    payload, _ = version_answer(version, pooling_interval, config_url, uuid)
    return b"id: %d\nevent: config\ndata: %s\n\n" % (version, payload)


def preflight_event(request: dict) -> bytes:
    # No id: a pre-flight request is not a version, and must not move the client's Last-Event-ID.
    return b"event: preflight\ndata: %s\n\n" % json.dumps(request).encode()


REVOKED_EVENT = b'event: revoked\ndata: {"detail": "This agent has been revoked."}\n\n'
# Answers of the caps on held watches (hub.HeldWatches), as arguments of _respond: the agent's
# oldest watch, ended by a newer one (429, as for a client asking too much), and a new watch
# while the process holds its maximum (503: another process, or this one shortly, takes it).
REPLACED_DETAIL = (
    "A newer watch of this agent took this one's place (CONTROLLER_MAX_WATCHES_PER_AGENT)."
)
REPLACED = (429, {"detail": REPLACED_DETAIL}, [(b"retry-after", b"1")])
REPLACED_EVENT = b"event: replaced\ndata: %s\n\n" % json.dumps({"detail": REPLACED_DETAIL}).encode()
WATCHES_FULL = (
    503,
    {"detail": "This controller holds as many watches as it may; try again shortly."},
    [(b"retry-after", b"5")],
)


async def _send_chunk(send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _until_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _settle(future: asyncio.Future, result) -> None:
    if not future.done():
        future.set_result(result)


def _refusal(scope) -> tuple | None:
    """What Django's middleware would answer instead of these paths' handlers, as arguments of
    _respond, or None: the Host header checked against ALLOWED_HOSTS, and the redirect to
    HTTPS when SECURE_SSL_REDIRECT is on."""
    host = _header(scope, b"host")
    if host is None:
        server = scope.get("server") or ("", None)
        host = str(server[0] or "")
    domain, _ = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]  # as Django's HttpRequest.get_host
    if not domain or not validate_host(domain, allowed):
        logger.warning("refused %s with Host %r: not in ALLOWED_HOSTS", scope["path"], host)
        return 400, {"detail": "Invalid Host header."}
    if settings.SECURE_SSL_REDIRECT and not _is_secure(scope):
        query = scope.get("query_string", b"").decode("latin-1")
        location = f"https://{host}{scope['path']}" + (f"?{query}" if query else "")
        return 301, {"detail": "Use HTTPS."}, [(b"location", location.encode())]
    return None


def _is_secure(scope) -> bool:
    if scope.get("scheme") == "https":
        return True
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        name, value = proxy_header
        header = name.removeprefix("HTTP_").lower().replace("_", "-").encode()
        return (_header(scope, header) or "").split(",")[0].strip() == value
    return False


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(("timeout", None))


# What _read_body returns for a body over the limit.
TOO_LARGE = object()


async def _read_body(receive, limit: int):
    """The request body; TOO_LARGE past `limit` bytes, None when the client left."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        size += len(message.get("body", b""))
        if size > limit:
            return TOO_LARGE
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _respond(send, status: int, body: dict, extra_headers=None, preflight=None) -> int:
    """Send a JSON answer; returns its status (for the request metrics)."""
    if status == 200 and preflight:
        answer = {field: body.get(field) for field in STATE_FIELDS}
        payload, headers = _response(json.dumps({**answer, "preflight": preflight}))
    elif status == 200:
        payload, headers = version_answer(*(body.get(field) for field in STATE_FIELDS))
    else:
        payload, headers = _response(json.dumps(body))
    if extra_headers:
        headers = [*headers, *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
    return status


@functools.lru_cache(maxsize=16)
def version_answer(
    version: int, pooling_interval: int | None, config_url: str | None, uuid: str | None
) -> tuple[bytes, list]:
    """The bytes of one version's answer. Thousands of watches woken by one change answer the
    same bytes, so they are encoded once per version (and per content, which for a version
    never changes), whichever agents they go to."""
    return _response(
        json.dumps(
            {
                "version": version,
                "pooling_interval": pooling_interval,
                "config_url": config_url,
                "uuid": uuid,
            }
        )
    )


def _response(text: str) -> tuple[bytes, list]:
    return _response_bytes(text.encode())


def _response_bytes(payload: bytes) -> tuple[bytes, list]:
    return payload, [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
    ]
