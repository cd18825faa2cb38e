"""A cap on request bodies, in front of everything the controller serves (Django and the fast
agent paths alike): a body over CONTROLLER_MAX_BODY_BYTES gets 413 and is not read past the cap.

A declared Content-Length over the cap is refused before any of the body is read. A body of
unknown length (chunked) is read up to the cap, then refused; one within it is handed on whole,
with its Content-Length.
"""

import json

from asgiref.sync import markcoroutinefunction

TOO_LARGE = 413


class BodyLimit:
    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.hub = getattr(app, "hub", None)  # the watch hub, for the server's shutdown

    @markcoroutinefunction
    def __call__(self, scope, receive, send):
        # A plain function that hands back the coroutine to run: a request passed on as it is
        # (every held watch) keeps no frame of this one alive.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            return self._refuse(send)
        if length is not None or not _chunked(scope):
            # Declared within the cap (the server never delivers more than declared), or none.
            return self.app(scope, receive, send)
        return self._read_chunked(scope, receive, send)

    async def _read_chunked(self, scope, receive, send) -> None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        # Now that its length is known, say it: Django reads no more than Content-Length.
        headers = [
            (key, value)
            for key, value in scope.get("headers", [])
            if key not in (b"transfer-encoding", b"content-length")
        ]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app(dict(scope, headers=headers), replay, send)

    async def _refuse(self, send) -> None:
        payload = json.dumps(
            {"detail": f"Request body over {self.max_bytes} bytes (CONTROLLER_MAX_BODY_BYTES)."}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": TOO_LARGE,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    # The unread rest of the body makes the connection unusable.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


def _content_length(scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None or not value.strip().isdigit():
        # A malformed length never reaches here: the HTTP server refuses it first.
        return None
    return int(value)


def _chunked(scope) -> bool:
    return b"chunked" in (_header(scope, b"transfer-encoding") or b"").lower()
