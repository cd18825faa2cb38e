"""The version watch: `GET /config/version?version=KNOWN&wait=SECONDS` as a bare ASGI endpoint.

Thousands of agents hold this request open, and a change must answer them all at once. Django's
request path costs about a millisecond per woken request, so this one endpoint is served here,
in front of Django: it shares the authentication, the cached state and the query rules with the
rest of the API and skips only the per-request middleware and view machinery.

Each process runs one Hub. It keeps ONE Redis subscription for the whole process and wakes every
waiting request from it; when Redis is absent or down it re-reads the database once a second
while anyone is waiting, so no change is missed either way.
"""

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from urllib.parse import unquote, urlsplit

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.http import QueryDict
from django.http.request import split_domain_port, validate_host

from apps.agents.auth import find_agent, touch_last_seen
from apps.agents.models import Agent
from apps.agents.tokens import bearer_token
from apps.configs import notifications
from apps.configs.errors import NoConfigYet
from apps.configs.models import ConfigVersion
from apps.configs.serializers import ConfigSerializer, VersionQuerySerializer
from apps.configs.services import get_current_config, get_current_state, state_of
from apps.ops import metrics
from protocol.config import ConfigState

logger = logging.getLogger(__name__)

WATCH_PATH = "/config/version"
CONFIG_PATH = "/config/agent"
FAST_PATHS = (WATCH_PATH, CONFIG_PATH)
DATABASE_DOWN = "The database is unavailable; try again shortly."
REFUSED_AGENT = "Invalid or revoked agent token."
WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="agent"')
DB_RECHECK_SECONDS = 1.0
REDIS_RETRY_MAX_SECONDS = 5.0


class Waiter:
    """One held request: woken with the new state, or with None when its agent is revoked."""

    __slots__ = ("known", "agent_id", "future")

    def __init__(self, known: int, future: asyncio.Future) -> None:
        self.known = known
        self.agent_id: str | None = None
        self.future = future


class Hub:
    """Wakes this process's held watches when the version moves past what they know."""

    def __init__(self) -> None:
        self.waiters: set[Waiter] = set()
        self.latest: ConfigState = state_of(None)
        self.redis_healthy = False
        self.notifications_seen = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []

    # Life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        notifications.set_local_listener(self.deliver_threadsafe)
        if settings.REDIS_URL:
            self._tasks.append(asyncio.create_task(self._listen_redis()))
        self._tasks.append(asyncio.create_task(self._recheck_database()))

    async def stop(self) -> None:
        notifications.set_local_listener(None)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a Redis client cancelled mid-read may never finish closing.
            await asyncio.wait(self._tasks, timeout=2)
        self._tasks.clear()
        self.release_all()

    def release_all(self) -> None:
        """Answer every held watch now with 503 (the process is stopping), so that its agent
        reconnects at once."""
        for waiter in list(self.waiters):
            if not waiter.future.done():
                waiter.future.set_result(("shutdown", None))

    # Delivery ---------------------------------------------------------------------------

    def deliver_threadsafe(self, message: dict) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.deliver, message)

    def deliver(self, message: dict) -> None:
        self.notifications_seen += 1
        metrics.instruments().notifications_received.inc()
        if message.get("type") == "config":
            state = ConfigState(
                version=message.get("version"), pooling_interval=message.get("pooling_interval")
            )
            if isinstance(state["version"], int):
                self.advance(state)
        elif message.get("type") == "revoked":
            self.cut(message.get("agent_id"))

    def advance(self, state: ConfigState) -> None:
        """Wake every waiter that knows an older version. Versions only rise: a late, older
        notification (two processes publishing at once) wakes nobody."""
        if state["version"] <= self.latest["version"]:
            return
        self.latest = state
        woken = 0
        for waiter in self.waiters:
            if waiter.known != state["version"] and not waiter.future.done():
                waiter.future.set_result(("changed", state))
                woken += 1
        if woken:
            logger.info("version %s: woke %s held watches", state["version"], woken)

    def cut(self, agent_id: str | None) -> None:
        for waiter in self.waiters:
            if waiter.agent_id == agent_id and not waiter.future.done():
                waiter.future.set_result(("revoked", None))

    # Sources of news ----------------------------------------------------------------------

    async def _listen_redis(self) -> None:
        delay = 0.2
        while True:
            client = _subscriber_client()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(settings.NOTIFY_CHANNEL)
                if not self.redis_healthy:
                    logger.info("watch hub subscribed to %s", settings.NOTIFY_CHANNEL)
                self.redis_healthy = True
                delay = 0.2
                # A change may have been published while we were not subscribed.
                await self._read_database_once()
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        self._deliver_raw(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any Redis failure: recheck the DB, retry
                if self.redis_healthy:
                    logger.warning(
                        "watch hub lost Redis (%s); re-reading the database every %.0f s until "
                        "it is back",
                        exc,
                        DB_RECHECK_SECONDS,
                    )
                self.redis_healthy = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX_SECONDS)
            finally:
                await _quietly(pubsub.aclose())
                await _quietly(client.aclose())

    def _deliver_raw(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            logger.warning("ignoring a malformed notification: %r", data[:200])
            return
        if isinstance(message, dict):
            self.deliver(message)

    async def _recheck_database(self) -> None:
        """While Redis cannot be trusted and someone is waiting, poll the database each second."""
        while True:
            await asyncio.sleep(DB_RECHECK_SECONDS)
            if self.redis_healthy or not self.waiters:
                continue
            try:
                await self._read_database_once()
                await self._cut_revoked_waiters()
            except DatabaseError as exc:
                logger.warning("watch hub could not read the database: %s", exc)

    async def _read_database_once(self) -> None:
        state = await _state_from_database()
        self.advance(state)

    async def _cut_revoked_waiters(self) -> None:
        held = {w.agent_id for w in self.waiters if w.agent_id}
        if held:
            revoked = await _revoked_among(held)
            for agent_id in revoked:
                self.cut(agent_id)


def _subscriber_client():
    """An asyncio Redis client for the hub's subscription. With Sentinel, each (re)connection
    asks the sentinels where the master is, so after a failover the retry loop above
    subscribes on the new master by itself."""
    import redis.asyncio as aioredis
    from redis.asyncio.sentinel import Sentinel

    options = {"socket_connect_timeout": 1.0, "health_check_interval": 10}
    if not settings.REDIS_SENTINELS:
        return aioredis.from_url(settings.REDIS_URL, **options)
    url = urlsplit(settings.REDIS_URL)
    sentinel = Sentinel(
        settings.REDIS_SENTINEL_ADDRESSES,
        sentinel_kwargs={"socket_connect_timeout": 1.0, "socket_timeout": 1.0},
    )
    return sentinel.master_for(
        settings.REDIS_SENTINEL_MASTER,
        db=int(url.path.strip("/") or 0),
        password=unquote(url.password) if url.password else None,
        username=unquote(url.username) if url.username else None,
        **options,
    )


def _with_database(function):
    """Run `function` in a worker thread with a database connection that goes back to the
    pool (or is closed) when it returns: these threads outlive any one request."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            connection.close()

    return sync_to_async(wrapper, thread_sensitive=False)


@_with_database
def _state_from_database() -> ConfigState:
    return state_of(get_current_config())


@_with_database
def _revoked_among(agent_ids: set[str]) -> list[str]:
    return [
        str(pk)
        for pk in Agent.objects.filter(pk__in=agent_ids, revoked_at__isnull=False).values_list(
            "pk", flat=True
        )
    ]


async def _quietly(awaitable) -> None:
    # Closing a connection that already broke may fail or hang; there is nothing left to do.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(awaitable, timeout=1)


@_with_database
def _authenticate_and_read(token: str | None) -> tuple[Agent | None, dict | None]:
    """The agent for `token` and the current state, in one hop to a worker thread."""
    agent = find_agent(token) if token else None
    if agent is None:
        return None, None
    touch_last_seen(agent)
    return agent, get_current_state()


@_with_database
def _config_for_agent(token: str | None, if_none_match: str | None):
    """(status, body, extra headers) for GET /config/agent, in one hop to a worker thread."""
    agent = find_agent(token) if token else None
    if agent is None:
        return 401, {"detail": REFUSED_AGENT}, [WWW_AUTHENTICATE]
    touch_last_seen(agent)
    state = get_current_state()
    if state["version"] == 0:
        return 404, {"detail": NoConfigYet().detail}, []
    etag = f'"{state["version"]}"'
    headers = [(b"etag", etag.encode())]
    if etag_matches(if_none_match, etag):
        return 304, None, headers
    return 200, config_body(state["version"]), headers


@functools.lru_cache(maxsize=8)
def config_body(version: int) -> bytes:
    """The JSON of one version; a version never changes once made, so it is kept."""
    config = ConfigVersion.objects.get(version=version)
    return json.dumps(ConfigSerializer(config).data).encode()


def etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = {item.strip().removeprefix("W/") for item in header.split(",")}
    return etag in candidates or "*" in candidates


class WatchEndpoint:
    """ASGI app for the two agent reads, GET /config/version (the watch) and GET
    /config/agent; everything else goes to `fallback` (Django)."""

    def __init__(self, fallback) -> None:
        self.fallback = fallback
        self.hub = Hub()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http" and scope["method"] == "GET" and scope["path"] in FAST_PATHS:
            handler = self._watch if scope["path"] == WATCH_PATH else self._config
            await self._measured(_guarded(handler), scope, receive, send)
        else:
            await self.fallback(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.hub.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.hub.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _ensure_started(self) -> None:
        # Servers without lifespan support (or tests calling the app directly) start it here.
        if self.hub.loop is None:
            await self.hub.start()

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
            await handler(scope, receive, counted_send)
        finally:
            metrics.observe_request(scope["path"], "GET", status, time.perf_counter() - started)

    async def _config(self, scope, receive, send) -> None:
        """GET /config/agent: every agent fetches it right after a change, all at once."""
        token = bearer_token(_header(scope, b"authorization"))
        try:
            status, body, headers = await _config_for_agent(token, _header(scope, b"if-none-match"))
        except DatabaseError as exc:
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
        await self._ensure_started()
        query = QueryDict(scope.get("query_string", b"").decode("latin-1"))
        checked = VersionQuerySerializer(data=query)
        valid = checked.is_valid()
        known = checked.validated_data.get("version") if valid else None
        wait = checked.validated_data.get("wait", 0) if valid else 0
        token = bearer_token(_header(scope, b"authorization"))

        # Subscribe before reading, so a change committed in between still wakes us.
        waiter = Waiter(-1 if known is None else known, asyncio.get_running_loop().create_future())
        self.hub.waiters.add(waiter)
        try:
            try:
                agent, state = await _authenticate_and_read(token)
            except DatabaseError as exc:
                logger.error("watch: database unavailable: %s", exc)
                await _respond(send, 503, {"detail": DATABASE_DOWN})
                return
            if agent is None:
                await _respond(send, 401, {"detail": REFUSED_AGENT}, [WWW_AUTHENTICATE])
                return
            if not valid:
                await _respond(send, 400, checked.errors)
                return
            waiter.agent_id = str(agent.pk)
            self.hub.advance(state)
            # A notification may have outrun the cache refresh: trust the newer of the two.
            if self.hub.latest["version"] > state["version"]:
                state = self.hub.latest
            if known is None or wait == 0 or state["version"] != known:
                await _respond(send, 200, state)
                return
            if waiter.future.done():
                outcome, news = waiter.future.result()
            else:
                held = metrics.instruments().watches
                held.inc()
                try:
                    outcome, news = await self._hold(waiter, wait)
                finally:
                    held.dec()
            if outcome == "revoked":
                await _respond(send, 401, {"detail": "This agent has been revoked."})
            elif outcome == "shutdown":
                # This process is stopping. A 200 with the unchanged state would tell the agent
                # that the controller held the watch for its whole wait, and the agent would
                # wait as long again before asking (up to a minute, with any change made
                # meanwhile unseen); "unavailable" makes it retry with its backoff, and so find
                # another process or the restarted one within seconds.
                await _respond(
                    send,
                    503,
                    {"detail": "The controller is restarting; try again shortly."},
                    [(b"retry-after", b"1")],
                )
            else:
                await _respond(send, 200, news if outcome == "changed" else state)
        finally:
            self.hub.waiters.discard(waiter)

    async def _hold(self, waiter: Waiter, wait: int) -> tuple[str, dict | None]:
        # Up to wait/16 of jitter, so that many watches started together do not all come back
        # at the same instant. A timer rather than a task per request keeps a wake-up cheap; a
        # client that hangs up is noticed when its answer is written.
        timeout = wait + random.uniform(0, wait / 16)
        timer = asyncio.get_running_loop().call_later(timeout, _expire, waiter.future)
        try:
            return await waiter.future
        finally:
            timer.cancel()


def _guarded(handler):
    """`handler` behind the checks Django's middleware makes for every other path: the Host
    header against ALLOWED_HOSTS, and the redirect to HTTPS when SECURE_SSL_REDIRECT is on."""

    async def guarded(scope, receive, send) -> None:
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
            await _respond(send, 400, {"detail": "Invalid Host header."})
            return
        if settings.SECURE_SSL_REDIRECT and not _is_secure(scope):
            query = scope.get("query_string", b"").decode("latin-1")
            location = f"https://{host}{scope['path']}" + (f"?{query}" if query else "")
            await _respond(send, 301, {"detail": "Use HTTPS."}, [(b"location", location.encode())])
            return
        await handler(scope, receive, send)

    return guarded


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


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _respond(send, status: int, body: dict, extra_headers=None) -> None:
    if status == 200:
        payload, headers = _state_response(body["version"], body["pooling_interval"])
    else:
        payload, headers = _response(json.dumps(body))
    if extra_headers:
        headers = [*headers, *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@functools.lru_cache(maxsize=16)
def _state_response(version: int, pooling_interval: int | None) -> tuple[bytes, list]:
    # Thousands of watches woken by one change answer the same bytes: encode them once.
    return _response(json.dumps({"version": version, "pooling_interval": pooling_interval}))


def _response(text: str) -> tuple[bytes, list]:
    return _response_bytes(text.encode())


def _response_bytes(payload: bytes) -> tuple[bytes, list]:
    return payload, [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
    ]
