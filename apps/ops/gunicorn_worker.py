"""The gunicorn worker class for the controller: uvicorn, plus a clean hand-off of held watches
and a deadline for request heads.

When a worker is told to stop, its held watches are answered at once (503, retry shortly), so
their agents re-connect (to another worker or to the restarted one) instead of waiting for a
cut connection and backing off.

uvicorn has no limit on how long a client may take to send a request head: a client that sends
half of one and then nothing holds its connection (and a file descriptor) until it gives up, so
a few thousand such clients exhaust the process. HeadTimeoutProtocol closes a connection whose
head is not complete within CONTROLLER_HEADER_TIMEOUT seconds of its first byte (of the
connection, for a first request); an idle keep-alive connection is uvicorn's own timeout's.

Each worker listens on a socket of its own, so that the kernel shares connections out among
the processes evenly (listeners.py).
"""

import asyncio
import logging
import sys
import time

from django.conf import settings
from gunicorn.arbiter import Arbiter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from apps.ops import metrics
from apps.ops.listeners import own_listeners

logger = logging.getLogger("apps.ops")


class HeadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol (httptools), closing a connection whose request head does not
    arrive whole within CONTROLLER_HEADER_TIMEOUT."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_deadline: asyncio.TimerHandle | None = None
        self._arm_head_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The next request on a keep-alive connection: its head has the same time.
        if self.head_deadline is None:
            self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_head_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self.head_deadline = self.loop.call_later(
            settings.CONTROLLER_HEADER_TIMEOUT, self._head_too_slow
        )

    def _disarm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        if not self.transport.is_closing():
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            self.transport.close()
            note_head_timeout(peer)


# Closed connections are logged at most this often, with how many since the last line: a flood
# of slow or idle connections, what the deadline is against, would otherwise write a line each.
HEAD_TIMEOUT_LOG_SECONDS = 10.0
_head_timeouts = {"unlogged": 0, "logged_at": -HEAD_TIMEOUT_LOG_SECONDS}


def note_head_timeout(peer: str) -> None:
    """Count one connection closed by the head deadline; log the count now and then."""
    metrics.instruments().head_timeouts.inc()
    _head_timeouts["unlogged"] += 1
    now = time.monotonic()
    if now - _head_timeouts["logged_at"] >= HEAD_TIMEOUT_LOG_SECONDS:
        logger.warning(
            "closed %s connection(s) with no whole request head within %s s "
            "(CONTROLLER_HEADER_TIMEOUT), such as that of %s",
            _head_timeouts["unlogged"],
            settings.CONTROLLER_HEADER_TIMEOUT,
            peer,
        )
        _head_timeouts.update(unlogged=0, logged_at=now)


class ControllerWorker(UvicornWorker):
    CONFIG_KWARGS = {
        "loop": "auto",
        "http": HeadTimeoutProtocol,
        "timeout_graceful_shutdown": 10,
    }

    def init_process(self) -> None:
        # Before gunicorn's set-up, which takes these sockets as the ones to serve from.
        self.sockets = own_listeners(self.sockets)
        super().init_process()

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = Server(config=self.config)
        self._install_sigquit_handler()
        watcher = asyncio.create_task(self._release_watches_on_exit(server))
        try:
            await server.serve(sockets=self.sockets)
        finally:
            watcher.cancel()
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def _release_watches_on_exit(self, server: Server) -> None:
        hub = getattr(self.wsgi, "hub", None)
        while not server.should_exit:
            await asyncio.sleep(0.1)
        if hub is not None:
            hub.release_all()
