"""The ASGI handler in front of Django's views (controller_site/request_threads.py): each request's
middleware and view run on one thread, threads are kept from one request to the next, and
requests in flight at once still run side by side."""

import asyncio
import threading

from django.core.signals import request_started

from controller_site.request_threads import SyncChainASGIHandler


async def get(handler, path: str = "/healthz") -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
        "root_path": "",
    }
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

    await handler(scope, receive, send)
    return answer["status"], answer["body"]


class Threads:
    """The threads that ran each request's start (a request_started receiver runs on the
    request's thread), and a hook to hold a request there."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.hold: threading.Event | None = None

    def __call__(self, **kwargs) -> None:
        self.seen.append(threading.get_ident())
        if self.hold is not None:
            hold, self.hold = self.hold, None
            assert hold.wait(10), "the held request was never let go"


def test_requests_one_after_another_reuse_their_threads():
    threads = Threads()
    request_started.connect(threads, weak=False)
    try:
        handler = SyncChainASGIHandler()

        async def run():
            return [await get(handler) for _ in range(20)]

        answers = asyncio.run(run())
    finally:
        request_started.disconnect(threads)
    assert answers == [(200, b'{"status": "ok"}')] * 20
    assert len(threads.seen) == 20
    # A thread is back in the pool a moment after its request ends: two take turns.
    assert len(set(threads.seen)) <= 2
    assert threads.seen[0] != threading.get_ident()  # not the event loop's


def test_requests_at_once_run_side_by_side():
    threads = Threads()
    request_started.connect(threads, weak=False)
    try:
        handler = SyncChainASGIHandler()
        threads.hold = threading.Event()
        held = threads.hold

        async def run():
            first = asyncio.ensure_future(get(handler))
            while not threads.seen:
                await asyncio.sleep(0.01)
            # The first request is held in its thread; the second must not wait for it.
            second = await asyncio.wait_for(get(handler), timeout=5)
            held.set()
            return await first, second

        first, second = asyncio.run(run())
    finally:
        request_started.disconnect(threads)
    assert first == second == (200, b'{"status": "ok"}')
    assert len(set(threads.seen)) == 2


def test_a_thread_still_busy_is_not_handed_out():
    """A request whose view outlives it (its task cancelled, as when the client leaves) keeps
    its thread; the next request runs on another one, at once."""
    threads = Threads()
    request_started.connect(threads, weak=False)
    try:
        handler = SyncChainASGIHandler()
        threads.hold = threading.Event()
        held = threads.hold

        async def run():
            first = asyncio.ensure_future(get(handler))
            while not threads.seen:
                await asyncio.sleep(0.01)
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            second = await asyncio.wait_for(get(handler), timeout=5)
            held.set()
            return second

        second = asyncio.run(run())
    finally:
        request_started.disconnect(threads)
    assert second == (200, b'{"status": "ok"}')
    assert len(set(threads.seen)) == 2
