"""The ASGI handler in front of Django's views (controller_site/request_threads.py): each request's
middleware and view run on one thread, threads are kept from one request to the next, and
requests in flight at once still run side by side."""

import asyncio
import threading

import pytest
from django.core.signals import request_started

from controller_site.request_threads import SyncChainASGIHandler
from tests.support.clients import http_scope

HEALTHY = (200, b'{"status": "ok"}')


async def get(handler, path: str = "/healthz") -> tuple[int, bytes]:
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    answer = {"body": b""}

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client never leaves

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        else:
            answer["body"] += message.get("body", b"")

    await handler(http_scope("GET", path, "", [(b"host", b"127.0.0.1")]), receive, send)
    return answer["status"], answer["body"]


class Threads:
    """The threads that ran each request's start (a request_started receiver runs on the
    request's thread), and a hook to hold the next request there."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.hold: threading.Event | None = None

    def __call__(self, **kwargs) -> None:
        self.seen.append(threading.get_ident())
        if self.hold is not None:
            hold, self.hold = self.hold, None
            assert hold.wait(10), "the held request was never let go"


@pytest.fixture
def threads():
    seen = Threads()
    request_started.connect(seen, weak=False)
    yield seen
    request_started.disconnect(seen)


def second_while_first_is_held(threads: Threads, *, leave_first: bool) -> tuple:
    """A request held in its thread (left by its client when `leave_first`: its task is
    cancelled, its view goes on), then another: (the first's outcome, the second's answer).
    The first is let go only once the second is answered."""
    handler = SyncChainASGIHandler()
    held = threads.hold = threading.Event()

    async def run():
        first = asyncio.ensure_future(get(handler))
        while not threads.seen:
            await asyncio.sleep(0.01)
        if leave_first:
            first.cancel()
        second = await asyncio.wait_for(get(handler), timeout=5)
        held.set()
        (outcome,) = await asyncio.gather(first, return_exceptions=True)
        return outcome, second

    return asyncio.run(run())


def test_requests_one_after_another_reuse_their_threads(threads):
    handler = SyncChainASGIHandler()

    async def run():
        return [await get(handler) for _ in range(20)]

    assert asyncio.run(run()) == [HEALTHY] * 20
    assert len(threads.seen) == 20
    # A thread is back in the pool a moment after its request ends: two take turns.
    assert len(set(threads.seen)) <= 2
    assert threads.seen[0] != threading.get_ident()  # not the event loop's


def test_requests_at_once_run_side_by_side(threads):
    first, second = second_while_first_is_held(threads, leave_first=False)
    assert first == second == HEALTHY
    assert len(set(threads.seen)) == 2


def test_a_thread_still_busy_is_not_handed_out(threads):
    """A request whose view outlives it (its client left) keeps its thread; the next request
    runs on another one, at once."""
    first, second = second_while_first_is_held(threads, leave_first=True)
    assert isinstance(first, asyncio.CancelledError)
    assert second == HEALTHY
    assert len(set(threads.seen)) == 2
