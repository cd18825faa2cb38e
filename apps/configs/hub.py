"""The watch hub: wakes the watches held in this process when their scope's configuration
changes.

Each process runs one Hub. It keeps ONE Redis subscription for the whole process and wakes every
waiting request from it; when Redis is absent or down it re-reads the database once a second
while anyone is waiting, so no change is missed either way. The ASGI routes that hold the
watches are in watch.py. It keeps the newest state of each scope it has heard of, and its held
watches by scope once their agent is known, so that a change in one scope wakes that scope's
watches only. Every message read from Redis must carry the seal of a holder of
SECRET_KEY (apps/ops/sealed.py); one that does not only makes the hub read the database again.
The same subscription brings pre-flight requests
(apps/configs/preflight.py), which answer a held watch with the state its agent already has and
the request beside it.

The hub also does what this process, and no other, must do for itself about revoked agents: it
cuts their held watches, and it reads the recent revocations into this process's memory of
agent tokens (apps.agents.auth.sweep_revocations). Periodic work on the shared state, which any
one process may do for all, is not here but in apps/ops/jobs.py.
"""

import asyncio
import contextlib
import functools
import json
import logging
import time
from typing import TypedDict
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from redis.asyncio.sentinel import Sentinel

from apps.agents.auth import sweep_revocations
from apps.agents.models import Agent
from apps.configs import notifications
from apps.configs.services import get_current_config, state_of
from apps.configs.waiters import Deadlines, HeldWatches, Waiter
from apps.ops import metrics
from apps.ops.sealed import open_message
from apps.rollouts.targets import target_of
from protocol.config import ConfigState

logger = logging.getLogger(__name__)

DB_RECHECK_SECONDS = 1.0
REVOKED_KEPT = 100_000
REDIS_RETRY_MAX_SECONDS = 5.0
# What an agent gets of a pre-flight request in its watch's answer.
PREFLIGHT_FIELDS = ("id", "config_url", "timeout_seconds")
# Refused notifications are logged at most this often (with how many since the last line).
REFUSAL_LOG_SECONDS = 10.0


class RolloutSplit(TypedDict):
    """While a rollout splits the fleet: who still gets the previous version
    (apps.rollouts.targets)."""

    previous: ConfigState
    canary_labels: dict
    cutoff: str


class ServedState(ConfigState):
    """What this process serves of one scope (apps.configs.services.state_of): the newest
    version's answer, the revision of its rollout, the split while a rollout is under way, and
    the scope's id."""

    revision: int
    rollout: RolloutSplit | None
    scope: int


def stamp(state: ServedState) -> tuple[int, int]:
    """The order of served states: by version, then by the revision of its rollout."""
    return state["version"], state.get("revision") or 0


class Hub:
    """Wakes this process's held watches when the version moves past what they know."""

    def __init__(self) -> None:
        # Every held request; those whose agent is not known yet; the others by scope.
        self.waiters: set[Waiter] = set()
        self.pending: set[Waiter] = set()
        self.by_scope: dict[int, set[Waiter]] = {}
        self.held = HeldWatches(
            settings.CONTROLLER_MAX_WATCHES_PER_AGENT, settings.CONTROLLER_MAX_WATCHES
        )
        self.deadlines = Deadlines()
        # Agents revoked while this process runs. A watch is subscribed before its agent is
        # known (so that no change is missed), and a revocation that arrives in between finds
        # no waiter to cut: the watch checks here once its agent is known. Revocation is final.
        self.revoked: set[str] = set()
        # The newest state heard of each scope.
        self.latest: dict[int, ServedState] = {}
        self.redis_healthy = False
        # For trusted_latest: Redis subscriptions, counted as they start and end; `trusting`
        # once the read after one is done; per scope, the one its state was last heard in.
        self.generation = 0
        self.trusting = False
        self.heard: dict[int, int] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        # Pre-flight requests for agents holding no watch here, by agent id, until they expire.
        self.preflights: dict[str, dict] = {}
        # Set when the process stops: an event stream between two waits then ends too.
        self.stopping = False
        # A refused notification asks for one read of the database (see refuse()).
        self.recheck_requested = False
        self.refusal_logged_at = -REFUSAL_LOG_SECONDS
        self.refused_unlogged = 0

    # Life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        notifications.set_local_listener(self.deliver_threadsafe)
        if settings.REDIS_URL:
            self._tasks.append(asyncio.create_task(self._listen_redis()))
        self._tasks.append(asyncio.create_task(self._recheck_database()))
        self._tasks.append(asyncio.create_task(self._sweep_revocations()))

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
        self.stopping = True
        for waiter in list(self.waiters):
            if not waiter.future.done():
                waiter.future.set_result(("shutdown", None))

    # Held requests ------------------------------------------------------------------------

    def subscribe(self, waiter: Waiter) -> None:
        """Hold `waiter` before its agent is known, so that a change meanwhile still wakes it."""
        self.waiters.add(waiter)
        self.pending.add(waiter)

    def place(self, waiter: Waiter, agent: Agent) -> None:
        """Its agent is known: from now on only its scope's changes wake it."""
        waiter.agent_id = str(agent.pk)
        waiter.scope_id = agent.scope_id
        waiter.labels = agent.labels or {}
        self.pending.discard(waiter)
        self.by_scope.setdefault(agent.scope_id, set()).add(waiter)

    def unsubscribe(self, waiter: Waiter) -> None:
        self.waiters.discard(waiter)
        self.pending.discard(waiter)
        held = self.by_scope.get(waiter.scope_id) if waiter.scope_id is not None else None
        if held is not None:
            held.discard(waiter)
            if not held:
                del self.by_scope[waiter.scope_id]

    def latest_of(self, scope_id: int) -> ServedState:
        """The newest state heard of a scope; version 0 when none was."""
        state = self.latest.get(scope_id)
        return state if state is not None else state_of(None, scope_id)

    def trusted_latest(self, scope_id: int) -> ServedState | None:
        """A scope's newest state if it is current without a read (None: read it): read or told
        within this Redis subscription, so every change since was told too, no recheck pending.
        Between changes every agent watches again each minute or so, and a read each (a
        thread, the cache) was most of what a quiet fleet cost."""
        heard = self.trusting and self.heard.get(scope_id) == self.generation
        return self.latest.get(scope_id) if heard and not self.recheck_requested else None

    def trust_point(self) -> int | None:
        """Taken before reading a state: its subscription; None if Redis is not subscribed."""
        return self.generation if self.trusting else None

    def heard_in(self, scope_id: int, point: int | None) -> None:
        """A state read since `point` (trust_point) was advanced here: trusted for as long."""
        if point is not None and point == self.generation and self.trusting:
            self.heard[scope_id] = point

    # Delivery ---------------------------------------------------------------------------

    def deliver_threadsafe(self, message: dict) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.deliver, message)

    def deliver(self, message: dict) -> None:
        metrics.instruments().notifications_received.inc()
        if message.get("type") == "config":
            if not isinstance(message.get("scope"), int):
                # A controller of an older release names no scope: its change is read from the
                # database at the next recheck, for every scope held here.
                self.recheck_requested = True
                return
            state: ServedState = {
                "version": message.get("version"),
                "pooling_interval": message.get("pooling_interval"),
                "config_url": message.get("config_url"),
                "uuid": message.get("uuid"),
                "revision": message.get("revision") or 0,
                "rollout": message.get("rollout"),
                "scope": message["scope"],
            }
            if isinstance(state["version"], int) and isinstance(state["revision"], int):
                self.advance(state)
                self.heard_in(state["scope"], self.trust_point())
        elif message.get("type") == "revoked":
            self.cut(message.get("agent_id"))
        elif message.get("type") == "preflight":
            self.offer_preflight(message)
        elif message.get("type") == "labels":
            self.relabel(message.get("agent_id"), message.get("labels"))

    def advance(self, state: ServedState) -> None:
        """Wake every waiter of the state's scope whose answer is now another version than it
        knows. States only move forward: a late, older notification (two processes publishing
        at once) wakes nobody. During a rollout each waiter's answer is its agent's target
        (canary, started wave or not), decided from the state alone, without a query; the
        answers stay one per version."""
        scope_id = state["scope"]
        latest = self.latest.get(scope_id)
        if latest is not None and stamp(state) <= stamp(latest):
            if stamp(state) == stamp(latest) and latest["uuid"] is None:
                # The same version, now with its content (read after a bare notification).
                self.latest[scope_id] = state
            return
        self.latest[scope_id] = state
        for waiter in self.pending:
            # Still authenticating: it reads the newest state once it knows its agent.
            if not waiter.future.done():
                waiter.future.set_result(("changed", None))
        woken = 0
        for waiter in self.by_scope.get(scope_id, ()):
            if waiter.future.done():
                continue
            answer = target_of(state, waiter.agent_id, waiter.labels)
            if waiter.known != answer["version"]:
                waiter.future.set_result(("changed", answer))
                woken += 1
        if woken:
            logger.info("version %s: woke %s held watches", state["version"], woken)

    def latest_target_moved(self, waiter: Waiter) -> bool:
        """Whether the newest state answers this waiter another version than it knows (a
        re-armed stream checks this: a change while it was writing woke nobody)."""
        answer = target_of(self.latest_of(waiter.scope_id), waiter.agent_id, waiter.labels)
        return answer["version"] != waiter.known

    def offer_preflight(self, message: dict) -> None:
        """Answer the held watches of the agents a pre-flight names with the request; keep it
        for the others' next watch in this process, until it expires."""
        agent_ids, expires_at = message.get("agent_ids"), message.get("expires_at")
        if not isinstance(agent_ids, list) or not isinstance(expires_at, int | float):
            return
        request = {key: message.get(key) for key in PREFLIGHT_FIELDS}
        now = time.time()
        if expires_at <= now:
            return  # an old request sent again: nobody waits for its answer any more
        self.preflights = {
            agent_id: kept for agent_id, kept in self.preflights.items() if kept["expires_at"] > now
        }
        waiting = set(agent_ids)
        for waiter in self.waiters:
            if waiter.agent_id in waiting and not waiter.future.done():
                waiter.future.set_result(("preflight", request))
                waiting.discard(waiter.agent_id)
        for agent_id in waiting:
            self.preflights[agent_id] = {**request, "expires_at": expires_at}

    def take_preflight(self, agent_id: str) -> dict | None:
        """The pre-flight request kept for this agent, if one is still due; it is handed once."""
        kept = self.preflights.pop(agent_id, None)
        if kept is None or kept["expires_at"] <= time.time():
            return None
        return {key: kept[key] for key in PREFLIGHT_FIELDS}

    def relabel(self, agent_id: str | None, labels) -> None:
        """An operator changed this agent's labels: the watches it holds are answered by them,
        and woken now when they move its target (a canary ring added during a rollout)."""
        if not agent_id or not isinstance(labels, dict):
            return
        for waiter in self.waiters:
            if waiter.agent_id != agent_id:
                continue
            waiter.labels = labels
            if not waiter.future.done():
                answer = target_of(self.latest_of(waiter.scope_id), waiter.agent_id, labels)
                if waiter.known != answer["version"]:
                    waiter.future.set_result(("changed", answer))

    def cut(self, agent_id: str | None) -> None:
        if agent_id:
            if len(self.revoked) >= REVOKED_KEPT:
                self.revoked.clear()  # bounded; the token memory refuses them from then on
            self.revoked.add(agent_id)
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
                self.generation += 1
                delay = 0.2
                # A change, or a revocation, may have been published while we were not
                # subscribed.
                await self._read_database_once()
                # The subscription had a database read's time to take effect: trust from now.
                self.trusting = True
                try:
                    await self._cut_revoked_waiters()
                except DatabaseError as exc:
                    logger.warning("watch hub could not read the revocations: %s", exc)
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
                self.trusting = False
                self.generation += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX_SECONDS)
            finally:
                await _quietly(pubsub.aclose())
                await _quietly(client.aclose())

    def _deliver_raw(self, data: bytes) -> None:
        """A message from Redis: acted on only with a valid seal (apps/ops/sealed.py), since
        whoever can write to Redis can publish on the channel too."""
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):
            message = None
        opened = open_message(message) if isinstance(message, dict) else None
        if opened is None:
            self.refuse(data)
        else:
            self.deliver(opened)

    def refuse(self, data: bytes) -> None:
        """An unsealed notification changes nothing an agent receives. It may still say that
        something changed (a controller of an older release, or with another SECRET_KEY,
        sends such): the database is read again at the next recheck, at most once a second."""
        metrics.instruments().notifications_refused.inc()
        self.recheck_requested = True
        self.refused_unlogged += 1
        now = time.monotonic()
        if now - self.refusal_logged_at >= REFUSAL_LOG_SECONDS:
            logger.warning(
                "refused %s notification(s) on %s without a valid seal, such as %r: forged by "
                "someone who can write to Redis, or sent by a controller with another "
                "SECRET_KEY or of an older release. Nothing was served from it; the database "
                "is read again instead.",
                self.refused_unlogged,
                settings.NOTIFY_CHANNEL,
                bytes(data[:200]),
            )
            self.refusal_logged_at, self.refused_unlogged = now, 0

    async def _recheck_database(self) -> None:
        """While Redis cannot be trusted and someone is waiting, poll the database each second;
        once after a refused notification too."""
        while True:
            await asyncio.sleep(DB_RECHECK_SECONDS)
            if not self.waiters or (self.redis_healthy and not self.recheck_requested):
                continue
            self.recheck_requested = False
            try:
                await self._read_database_once()
                await self._cut_revoked_waiters()
            except DatabaseError as exc:
                logger.warning("watch hub could not read the database: %s", exc)

    async def _sweep_revocations(self) -> None:
        """Twice per AGENT_AUTH_CACHE_SECONDS, the revocations of the last minute, so that this
        process may trust its memory of the other agents' tokens (apps.agents.auth). A read
        that comes late (the event loop busy answering thousands of watches) leaves the memory
        untrusted for that moment, not dropped."""
        failing = False
        while True:
            try:
                await _sweep_revocations_once()
                failing = False
            except DatabaseError as exc:
                if not failing:
                    logger.warning("could not read the agents' revocations: %s", exc)
                failing = True
            await asyncio.sleep(settings.AGENT_AUTH_CACHE_SECONDS / 2)

    async def _read_database_once(self) -> None:
        """The state of every scope with a watch held here, from the database."""
        for state in await _states_from_database(list(self.by_scope)):
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


def with_database(function):
    """Run `function` in a worker thread with a database connection that goes back to the
    pool (or is closed) when it returns: these threads outlive any one request.

    The loop's executor rather than asgiref's sync_to_async: that one copies the request's
    context variables into the thread and back, and the copy brought back stays with the
    request's task, about 400 bytes for each of ten thousand held watches. Nothing these
    functions do reads a context variable (Django's connections are per thread)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            connection.close()

    @functools.wraps(function)
    async def in_thread(*args, **kwargs):
        call = functools.partial(wrapper, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    return in_thread


@with_database
def _states_from_database(scope_ids: list[int]) -> list[ServedState]:
    return [state_of(get_current_config(scope_id), scope_id) for scope_id in scope_ids]


@with_database
def _sweep_revocations_once() -> None:
    sweep_revocations()


@with_database
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
