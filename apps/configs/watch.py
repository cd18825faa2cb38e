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

from apps.agents.auth import find_agent, touch_last_seen
from apps.agents.models import Agent
from apps.agents.tokens import bearer_token
from apps.configs import notifications
from apps.configs.errors import NoConfigYet
from apps.configs.models import ConfigVersion
from apps.configs.serializers import ConfigSerializer, VersionQuerySerializer
from apps.configs.services import get_current_config, get_current_state, state_of
from apps.ops import metrics
from apps.rollouts.services import advance_rollouts, target_of

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
    """One held request: woken with its agent's new answer, or with None when its agent is
    revoked (or when the state moved before its agent was known)."""

    __slots__ = ("known", "agent_id", "labels", "future")

    def __init__(self, known: int, future: asyncio.Future) -> None:
        self.known = known
        self.agent_id: str | None = None
        self.labels: dict = {}
        self.future = future


def stamp(state: dict) -> tuple[int, int]:
    """The order of served states: by version, then by the rollout's revision of it."""
    return state["version"], state.get("revision") or 0


class Hub:
    """Wakes this process's held watches when the version moves past what they know."""

    def __init__(self) -> None:
        self.waiters: set[Waiter] = set()
        self.latest: dict = state_of(None)
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
        self._tasks.append(asyncio.create_task(self._advance_rollouts()))

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
            state = {
                "version": message.get("version"),
                "pooling_interval": message.get("pooling_interval"),
                "revision": message.get("revision") or 0,
                "rollout": message.get("rollout"),
            }
            if isinstance(state["version"], int) and isinstance(state["revision"], int):
                self.advance(state)
        elif message.get("type") == "revoked":
            self.cut(message.get("agent_id"))

    def advance(self, state: dict) -> None:
        """Wake every waiter whose answer is now another version than it knows. States only
        move forward: a late, older notification (two processes publishing at once) wakes
        nobody. During a rollout each waiter's answer is its agent's target (canary, started
        wave or not), decided from the state alone, without a query."""
        if stamp(state) <= stamp(self.latest):
            return
        self.latest = state
        woken = 0
        for waiter in self.waiters:
            if waiter.future.done():
                continue
            if waiter.agent_id is None:
                # Still authenticating: it reads the newest state once it knows its agent.
                waiter.future.set_result(("changed", None))
                continue
            answer = target_of(state, waiter.agent_id, waiter.labels)
            if waiter.known != answer["version"]:
                waiter.future.set_result(("changed", answer))
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

    async def _advance_rollouts(self) -> None:
        """Move a rolling rollout on, about once a second. Every controller process does this;
        the rollout's row lock makes exactly one of them act on each step, so no process of
        our own has to lead, and a restarted controller carries on from the database."""
        while True:
            await asyncio.sleep(settings.ROLLOUT_TICK_SECONDS)
            try:
                await _advance_rollouts_once()
            except DatabaseError as exc:
                logger.warning("could not advance the rollout: %s", exc)

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
def _state_from_database() -> dict:
    return state_of(get_current_config())


@_with_database
def _advance_rollouts_once() -> None:
    advance_rollouts()


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
    version = target_of(get_current_state(), agent.pk, agent.labels)["version"]
    if version == 0:
        return 404, {"detail": NoConfigYet().detail}, []
    etag = f'"{version}"'
    headers = [(b"etag", etag.encode())]
    if etag_matches(if_none_match, etag):
        return 304, None, headers
    return 200, config_body(version), headers


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
            await self._measured(handler, scope, receive, send)
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
            waiter.labels = agent.labels or {}
            self.hub.advance(state)
            # A notification may have outrun the cache refresh: trust the newer of the two.
            if stamp(self.hub.latest) > stamp(state):
                state = self.hub.latest
            answer = target_of(state, waiter.agent_id, waiter.labels)
            if known is None or wait == 0 or answer["version"] != known:
                await _respond(send, 200, answer)
                return
            if waiter.future.done() and waiter.future.result()[0] == "changed":
                # Woken before its agent was known, by a state already counted in the answer.
                waiter.future = asyncio.get_running_loop().create_future()
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
                await _respond(send, 200, news if outcome == "changed" else answer)
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
