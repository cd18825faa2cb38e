"""Django's ASGI handler, running each request's middleware and view in one go on a thread that
is kept from one request to the next.

Two costs of Django's own handler, for an API whose views are all sync (DRF):

- Its middleware chain is built for the event loop, and a middleware that can run either way
  (all of Django's, MiddlewareMixin) then runs each of its process_request, process_view and
  process_response hooks on a thread of its own: a dozen hops between the loop and a thread per
  request, before the view's. Here the chain is built sync, as under WSGI, and the whole of it
  runs in one call on the request's thread.
- It starts a thread for each request (asgiref's thread-sensitive context), and another to join
  it when the request ends. asgiref lets the caller hand that context an executor instead (a
  single thread, one call at a time, as before), so executors are kept here for the next
  request. An executor goes back to the pool only once its thread is free: a view still
  running after its client left keeps its thread, as it would have, and the next request gets
  another. (So requests one after another take turns on two threads: a thread is back in the
  pool a moment after its request ends.)
"""

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler

# Idle threads kept; past this, a thread that frees up ends. Requests in flight at once beyond
# it start threads of their own, as Django's handler does for every request.
IDLE_THREADS = 32


class SyncChainASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self.idle: list[ThreadPoolExecutor] = []

    async def get_response_async(self, request):
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = (
            self.idle.pop()
            if self.idle
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")
        )
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self._release(executor, asyncio.get_running_loop())

    def _release(self, executor: ThreadPoolExecutor, loop: asyncio.AbstractEventLoop) -> None:
        """Back to the pool once whatever the request left running on it has ended."""

        def freed(_future) -> None:
            try:
                loop.call_soon_threadsafe(self._keep, executor)
            except RuntimeError:  # the loop has closed: the process is stopping
                executor.shutdown(wait=False)

        # RuntimeError: the executor was shut down, as the process exits.
        with contextlib.suppress(RuntimeError):
            executor.submit(_nothing).add_done_callback(freed)

    def _keep(self, executor: ThreadPoolExecutor) -> None:
        if len(self.idle) < IDLE_THREADS:
            self.idle.append(executor)
        else:
            executor.shutdown(wait=False)


def _nothing() -> None:
    pass
