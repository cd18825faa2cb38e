"""The ASGI front: what every agent calls, served in front of Django, and the process's life cycle.

Thousands of agents hold a watch open, and a change must answer them all at once. Django's
request path costs about a millisecond per woken request, so the requests every agent makes are
served here: the watch and the stream (watch.py), the config fetch and the heartbeat
(agent_calls.py). They share the authentication, the cached state and the query rules with the
rest of the API and skip only the per-request middleware and view machinery. Everything else
goes to Django.

The ASGI lifespan starts and stops what lives as long as the process: the watch hub (hub.py),
the heartbeat batches (apps/agents/heartbeats.py) and, unless CONTROLLER_RUN_JOBS is off, the
periodic jobs (apps/ops/jobs.py).
"""

import asyncio
import time

from asgiref.sync import markcoroutinefunction
from django.conf import settings

from apps.agents.auth import find_agents, write_last_seen
from apps.agents.heartbeats import HeartbeatRecorder
from apps.agents.services import record_heartbeats
from apps.configs.agent_calls import CONFIG_PATH, HEARTBEAT_PATH, serve_config, take_heartbeat
from apps.configs.asgi import refusal, respond
from apps.configs.hub import Hub, with_database
from apps.configs.watch import STREAM_PATH, WATCH_PATH, Watches
from apps.ops import metrics
from apps.ops.jobs import JobRunner

_record_heartbeats = with_database(record_heartbeats)
_find_agents = with_database(find_agents)
_write_last_seen = with_database(write_last_seen)


class WatchEndpoint:
    """ASGI app for what every agent calls: GET /config/version (the watch), GET /config/stream,
    GET /config/agent and POST /agent/heartbeat; everything else goes to `fallback` (Django)."""

    def __init__(self, fallback) -> None:
        self.fallback = fallback
        self.hub = Hub()
        self.heartbeats = HeartbeatRecorder(
            write=_record_heartbeats,
            lookup=_find_agents,
            touch=_write_last_seen,
            flush_seconds=settings.HEARTBEAT_FLUSH_SECONDS,
            batch_size=settings.HEARTBEAT_BATCH_SIZE,
        )
        self.watches = Watches(
            self.hub, self.heartbeats.find, self.heartbeats.note_seen, self._ensure_started
        )
        self.jobs = JobRunner()

    @markcoroutinefunction
    def __call__(self, scope, receive, send):
        # A plain function that hands back its handler's coroutine: each of the thousands of
        # held watches keeps one coroutine frame fewer alive (a frame is some 300 bytes).
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "GET" and path == WATCH_PATH:
                return self.watches.watch(scope, receive, send)
            if method == "GET" and path == STREAM_PATH:
                return self.watches.stream(scope, receive, send)
            if method == "GET" and path == CONFIG_PATH:
                return self._measured(serve_config, scope, receive, send)
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
                if settings.CONTROLLER_RUN_JOBS:
                    self.jobs.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.hub.stop()
                # After the server stopped taking requests: the last reports are written.
                await self.heartbeats.stop()
                # The job step in progress finishes first (a thread: not on the event loop).
                await asyncio.to_thread(self.jobs.halt)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _ensure_started(self) -> None:
        # Servers without lifespan support (or tests calling the app directly) start it here;
        # the periodic jobs start with the lifespan only (or run apart: manage.py run_jobs).
        if self.hub.loop is None:
            await self.hub.start()
        self.heartbeats.start()

    async def _heartbeat(self, scope, receive, send) -> None:
        await self._ensure_started()
        await take_heartbeat(self.heartbeats, scope, receive, send)

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
            refused = refusal(scope)
            if refused is not None:
                await respond(counted_send, *refused)
            else:
                await handler(scope, receive, counted_send)
        finally:
            metrics.observe_request(
                scope["path"], scope["method"], status, time.perf_counter() - started
            )
