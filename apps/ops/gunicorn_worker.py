"""The gunicorn worker class for the controller: uvicorn, plus a clean hand-off of held watches.

When a worker is told to stop, its held watches are answered at once (503, retry shortly), so
their agents re-connect (to another worker or to the restarted one) instead of waiting for a
cut connection and backing off.
"""

import asyncio
import sys

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker


class ControllerWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "auto", "http": "auto", "timeout_graceful_shutdown": 10}

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
