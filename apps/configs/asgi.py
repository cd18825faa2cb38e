"""Small ASGI helpers for the requests served in front of Django (apps/configs/front.py).

Reading a header and a body, sending a JSON answer, and what Django's middleware would have
refused (a Host not in ALLOWED_HOSTS, plain HTTP under SECURE_SSL_REDIRECT): these requests
never reach that middleware, so its checks are repeated here.
"""

import asyncio
import json
import logging

from django.conf import settings
from django.http.request import split_domain_port, validate_host

logger = logging.getLogger(__name__)

# What read_body returns for a body over the limit.
TOO_LARGE = object()


def header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(receive, limit: int):
    """The request body; TOO_LARGE past `limit` bytes, None when the client left."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        size += len(message.get("body", b""))
        if size > limit:
            return TOO_LARGE
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def refusal(scope) -> tuple | None:
    """What Django's middleware would answer instead of these paths' handlers, as arguments of
    respond, or None: the Host header checked against ALLOWED_HOSTS, and the redirect to
    HTTPS when SECURE_SSL_REDIRECT is on."""
    host = header(scope, b"host")
    if host is None:
        server = scope.get("server") or ("", None)
        host = str(server[0] or "")
    domain, _ = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]  # as Django's HttpRequest.get_host
    if not domain or not validate_host(domain, allowed):
        logger.warning("refused %s with Host %r: not in ALLOWED_HOSTS", scope["path"], host)
        return 400, {"detail": "Invalid Host header."}
    if settings.SECURE_SSL_REDIRECT and not _is_secure(scope):
        query = scope.get("query_string", b"").decode("latin-1")
        location = f"https://{host}{scope['path']}" + (f"?{query}" if query else "")
        return 301, {"detail": "Use HTTPS."}, [(b"location", location.encode())]
    return None


def _is_secure(scope) -> bool:
    if scope.get("scheme") == "https":
        return True
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        name, value = proxy_header
        wanted = name.removeprefix("HTTP_").lower().replace("_", "-").encode()
        return (header(scope, wanted) or "").split(",")[0].strip() == value
    return False


def json_response(text: str) -> tuple[bytes, list]:
    """The bytes and headers of a JSON answer."""
    return response_bytes(text.encode())


def response_bytes(payload: bytes) -> tuple[bytes, list]:
    return payload, [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
    ]


async def send_answer(send, status: int, payload: bytes, headers: list) -> int:
    """Send a whole answer; returns its status (for the request metrics)."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
    return status


async def respond(send, status: int, body: dict, extra_headers=None) -> int:
    """Send a JSON answer; returns its status (for the request metrics)."""
    payload, headers = json_response(json.dumps(body))
    if extra_headers:
        headers = [*headers, *extra_headers]
    return await send_answer(send, status, payload, headers)


async def send_chunk(send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def until_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def settle(future: asyncio.Future, result) -> None:
    """Give `future` its result unless it has one already."""
    if not future.done():
        future.set_result(result)
