"""The controller's cap on request bodies (controller_site/body_limit.py), in process: a chunked
body over the cap is refused once the cap is passed, one within it reaches the app whole.
(tests/e2e/test_hostile.py sends the same through a real server.)"""

import asyncio
import json

from controller_site.body_limit import BodyLimit

CAP = 1000


class App:
    """The app behind the cap: notes the request it was handed, and its whole body."""

    def __init__(self) -> None:
        self.scope = None
        self.body = b""

    async def __call__(self, scope, receive, send) -> None:
        self.scope = scope
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def chunked(pieces: list[bytes]) -> tuple[dict, list[dict], list[dict]]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/login",
        "headers": [(b"transfer-encoding", b"chunked"), (b"content-type", b"application/json")],
    }
    messages = [
        {"type": "http.request", "body": piece, "more_body": n < len(pieces) - 1}
        for n, piece in enumerate(pieces)
    ]
    return scope, messages, []


def run(limit: BodyLimit, scope: dict, messages: list[dict], sent: list[dict]) -> int:
    """Serve one request; returns how many of its messages the cap read."""
    pending = list(messages)

    async def receive():
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(limit(scope, receive, send))
    return len(messages) - len(pending)


def test_a_chunked_body_over_the_cap_is_413_and_never_reaches_the_app():
    app = App()
    scope, messages, sent = chunked([b"x" * 600, b"x" * 600, b"x" * 600, b"x" * 600])

    read = run(BodyLimit(app, CAP), scope, messages, sent)

    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    assert "over 1000 bytes" in json.loads(sent[1]["body"])["detail"]
    assert app.scope is None
    # Read up to the cap and no further.
    assert read == 2


def test_a_chunked_body_of_exactly_the_cap_reaches_the_app_whole_with_its_length():
    app = App()
    scope, messages, sent = chunked([b"a" * 400, b"b" * 600])

    run(BodyLimit(app, CAP), scope, messages, sent)

    assert sent[0]["status"] == 200
    assert app.body == b"a" * 400 + b"b" * 600
    headers = dict(app.scope["headers"])
    assert headers[b"content-length"] == b"1000"
    assert b"transfer-encoding" not in headers


def test_a_declared_length_over_the_cap_is_refused_unread():
    app = App()
    scope, messages, sent = chunked([b"x" * 10])
    scope["headers"] = [(b"content-length", b"300000000")]

    read = run(BodyLimit(app, CAP), scope, messages, sent)

    assert sent[0]["status"] == 413
    assert read == 0
    assert app.scope is None
