"""One request through an ASGI app in the test's own event loop, as a server makes it."""

import asyncio
import json


async def call(app, method: str, path: str, headers: list, body: bytes = b"", query: str = ""):
    """(status, decoded JSON body or None). The request's body comes in one message; asked for
    more, the client stays connected, as a real one waiting for its answer."""
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query.encode(),
        "headers": headers,
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    payload = sent[1]["body"]
    return sent[0]["status"], json.loads(payload) if payload else None
