"""The version watch, `GET /config/version?version=KNOWN&wait=SECONDS`, and the event stream,
`GET /config/stream`, served in front of Django (apps/configs/front.py).

Thousands of agents hold one of these open, and a change must answer them all at once. Both
wait on this process's Hub (hub.py), which hears of every change: the watch answers once, the
stream sends one event (Server-Sent Events) per new target version of its agent on one
long-lived connection, without a new request after each change. Both are admitted the same way
(Watches.admit): subscribed before the agent and the state are read, so that a change in
between is not missed, then refused when the token, the query or the database says so.
"""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from django.db import DatabaseError
from django.http import QueryDict

from apps.agents.auth import (
    active_agent,
    last_seen_due,
    remembered_agent,
    token_digest,
    touch_last_seen,
)
from apps.agents.models import Agent
from apps.configs.answers import (
    KEEP_ALIVE,
    REPLACED,
    REPLACED_EVENT,
    REVOKED,
    REVOKED_EVENT,
    SHUTTING_DOWN,
    STATE_FIELDS,
    STREAM_RETRY,
    UNAUTHORIZED,
    UNAVAILABLE,
    WATCHES_FULL,
    preflight_answer,
    preflight_event,
    stream_event,
    version_answer,
)
from apps.configs.asgi import (
    header,
    refusal,
    respond,
    send_answer,
    send_chunk,
    settle,
    until_disconnect,
)
from apps.configs.hub import Hub, ServedState, stamp, with_database
from apps.configs.serializers import VersionQuerySerializer
from apps.configs.services import get_current_state
from apps.configs.waiters import Waiter
from apps.ops import metrics
from apps.rollouts.targets import target_of
from controller_site.errors import is_database_failure
from controller_site.tokens import bearer_token

logger = logging.getLogger(__name__)

WATCH_PATH = "/config/version"
STREAM_PATH = "/config/stream"
# A comment line this often keeps an idle stream open through proxies that cut silent ones.
KEEP_ALIVE_SECONDS = 15
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]
# The longest wait a watch may ask for (VersionQuerySerializer says the same to a client).
WAIT_MAX = 60
# Each one's name in the log.
WHAT = {WATCH_PATH: "watch", STREAM_PATH: "stream"}
HUNG_UP = ("gone", None)


@with_database
def _touch_and_read(agent: Agent) -> ServedState:
    """Note the agent's contact and read its scope's current state, in one hop to a worker
    thread."""
    touch_last_seen(agent)
    return get_current_state(agent.scope_id)


class Watches:
    """The watches and streams of one process, held on its `hub`. `find` looks agents up by
    token digest in batches (the heartbeat recorder's); `start` starts the hub when no
    lifespan did."""

    def __init__(self, hub: Hub, find, note_seen, start: Callable[[], Awaitable[None]]) -> None:
        self.hub = hub
        self.find = find
        self.note_seen = note_seen
        self.start = start

    async def authenticate_and_read(self, token: str | None) -> tuple[Agent | None, dict | None]:
        """The active agent of `token` and the current state. A token missing from the
        process's memory is looked up with every other one missing at the same moment, as for
        heartbeats: after a change, or when the memory's trust lapses under load, thousands of
        agents watch again at once, and one query each made the fleet's reports wait for them."""
        digest = token_digest(token) if token else None
        if digest is None:
            return None, None
        known, agent = remembered_agent(digest)
        if not known:
            agent = await self.find(digest)
        agent = active_agent(agent, digest)
        if agent is None:
            return None, None
        state = self.hub.trusted_latest(agent.scope_id)
        if state is not None:
            # Nothing to read, and the contact is written with the next heartbeat batch: no
            # hop to a thread, no query, no cache read.
            if last_seen_due(agent):
                self.note_seen(str(agent.pk))
            return agent, state
        point = self.hub.trust_point()
        state = await _touch_and_read(agent)
        self.hub.advance(state)
        self.hub.heard_in(agent.scope_id, point)
        return agent, state

    async def admit(self, waiter: Waiter, scope, send, bad_query) -> tuple[ServedState | None, int]:
        """Authenticate the agent of a subscribed `waiter` and read the served state:
        (state, 0) with the waiter's agent and labels set, or (None, status) once refused (no
        or a revoked token: 401; `bad_query`, the query's errors: 400; the database down: 503).
        """
        token = bearer_token(header(scope, b"authorization"))
        try:
            agent, state = await self.authenticate_and_read(token)
        except DatabaseError as exc:
            if not is_database_failure(exc):
                raise  # a bug in a query, not an outage: 500, with its traceback
            logger.error("%s: database unavailable: %s", WHAT[scope["path"]], exc)
            return None, await respond(send, *UNAVAILABLE)
        if agent is None:
            return None, await respond(send, *UNAUTHORIZED)
        if bad_query is not None:
            return None, await respond(send, 400, bad_query)
        self.hub.place(waiter, agent)
        if waiter.agent_id in self.hub.revoked:
            # Revoked between the token's lookup and now: no cut will come.
            return None, await respond(send, *REVOKED)
        return state, 0

    async def watch(self, scope, receive, send) -> None:
        """GET /config/version. Thousands are held at once, so everything a held one keeps
        alive counts: the Host check, the metrics and the wait are inline (no coroutine frame
        of their own), the query is read without a serializer in the usual case, and the
        served state and its answer are the hub's, shared by every watch."""
        started = time.perf_counter()
        status: int | str = "disconnected"
        try:
            refused = refusal(scope)
            if refused is not None:
                status = await respond(send, *refused)
                return
            await self.start()
            known, wait, errors = watch_query(scope.get("query_string", b""))
            # Subscribe before reading, so a change committed in between still wakes us.
            loop = asyncio.get_running_loop()
            waiter = Waiter(-1 if known is None else known, loop.create_future())
            self.hub.subscribe(waiter)
            try:
                state, refused_with = await self.admit(waiter, scope, send, errors)
                if state is None:
                    status = refused_with
                    return
                # authenticate_and_read advanced the hub with what it read; a notification may
                # have outrun the cache refresh: trust the newer of the two.
                # At the same stamp the hub's copy is the one kept, shared by every watch.
                latest = self.hub.latest_of(waiter.scope_id)
                if stamp(latest) >= stamp(state):
                    state = latest
                preflight = self.hub.take_preflight(waiter.agent_id)
                # During a rollout, the agent's own target: the new version or the previous one.
                answer = target_of(state, waiter.agent_id, waiter.labels)
                state = None
                if known is None or wait == 0 or answer["version"] != known or preflight:
                    status = await answer_version(send, answer, preflight)
                    return
                if waiter.future.done() and waiter.future.result()[0] == "changed":
                    # Woken before its agent was known, by a state already counted in the answer.
                    waiter.future = loop.create_future()
                if waiter.future.done():
                    outcome, news = waiter.future.result()
                else:
                    if not self.hub.held.hold(waiter):
                        status = await respond(send, *WATCHES_FULL)
                        return
                    held = metrics.instruments().watches
                    held.inc()
                    # Up to wait/16 of jitter, so that many watches started together do not all
                    # come back at the same instant. A shared deadline rather than a task per
                    # request keeps a wake-up cheap; a client that hangs up is noticed when its
                    # answer is written.
                    deadline = self.hub.deadlines.add(
                        waiter.future, wait + random.uniform(0, wait / 16)
                    )
                    try:
                        outcome, news = await waiter.future
                    finally:
                        self.hub.deadlines.discard(deadline, waiter.future)
                        held.dec()
                        self.hub.held.release(waiter)
                if outcome == "revoked":
                    status = await respond(send, *REVOKED)
                elif outcome == "shutdown":
                    status = await respond(send, *SHUTTING_DOWN)
                elif outcome == "replaced":
                    status = await respond(send, *REPLACED)
                elif outcome == "preflight":
                    # The state the agent knows, unchanged, and the request: it watches again
                    # at once, so a change made now reaches it as fast as ever.
                    status = await answer_version(send, answer, news)
                else:
                    status = await answer_version(send, news if outcome == "changed" else answer)
            finally:
                self.hub.unsubscribe(waiter)
        finally:
            metrics.observe_request(WATCH_PATH, "GET", status, time.perf_counter() - started)

    async def stream(self, scope, receive, send) -> None:
        """GET /config/stream: one event per new target version of the agent, on one
        connection. It is a watch that is re-armed after each answer: the same Waiter in the
        hub's set (woken by the same change, cut by the same revocation, released by the same
        shutdown), the same target rule and the same answer bytes, shared by every stream."""
        started = time.perf_counter()
        status: int | str = "disconnected"
        try:
            refused = refusal(scope)
            if refused is not None:
                status = await respond(send, *refused)
                return
            await self.start()
            known, bad_id = last_event_id(header(scope, b"last-event-id"))
            bad_query = {"detail": "Last-Event-ID must be a version number."} if bad_id else None
            loop = asyncio.get_running_loop()
            waiter = Waiter(-1, loop.create_future())
            # Subscribed before the read, as a watch: a change in between is not missed.
            self.hub.subscribe(waiter)
            try:
                state, refused_with = await self.admit(waiter, scope, send, bad_query)
                if state is None:
                    status = refused_with
                    return
                if not self.hub.held.hold(waiter):
                    status = await respond(send, *WATCHES_FULL)
                    return
                state = None
                start = {"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS}
                await send(start)
                status = 200
                await send_chunk(send, STREAM_RETRY)
                await self._stream_events(waiter, known, receive, send, loop)
            finally:
                self.hub.unsubscribe(waiter)
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
        gone = asyncio.ensure_future(until_disconnect(receive))
        gone.add_done_callback(lambda _: settle(waiter.future, HUNG_UP))
        try:
            preflight = self.hub.take_preflight(waiter.agent_id)
            while True:
                # The hub's latest is the newest state: whatever woke us, the answer is read
                # from it.
                answer = target_of(
                    self.hub.latest_of(waiter.scope_id), waiter.agent_id, waiter.labels
                )
                if answer["version"] != known:
                    known = answer["version"]
                    await send_chunk(send, stream_event(*(answer[f] for f in STATE_FIELDS)))
                if preflight:
                    await send_chunk(send, preflight_event(preflight))
                    preflight = None
                if waiter.replaced:
                    await send_chunk(send, REPLACED_EVENT)
                    return
                if self.hub.stopping or gone.done():
                    return
                waiter.known = known
                waiter.future = loop.create_future()
                if self.hub.latest_target_moved(waiter):
                    continue
                deadline = self.hub.deadlines.add(waiter.future, KEEP_ALIVE_SECONDS)
                try:
                    outcome, news = await waiter.future
                finally:
                    self.hub.deadlines.discard(deadline, waiter.future)
                if outcome == "timeout":
                    await send_chunk(send, KEEP_ALIVE)
                elif outcome == "preflight":
                    preflight = news
                elif outcome == "revoked":
                    await send_chunk(send, REVOKED_EVENT)
                    return
                elif outcome == "replaced":
                    await send_chunk(send, REPLACED_EVENT)
                    return
                elif outcome in ("shutdown", "gone"):
                    return
        finally:
            open_streams.dec()
            gone.cancel()
            # The end of the body: the server closes the response (or already did).
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def answer_version(send, answer, preflight: dict | None = None) -> int:
    """Send a watch its agent's target (a 200), with a pre-flight request beside it if any."""
    if preflight:
        payload, headers = preflight_answer(answer, preflight)
    else:
        payload, headers = version_answer(*(answer.get(field) for field in STATE_FIELDS))
    return await send_answer(send, 200, payload, headers)


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
