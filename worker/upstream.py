"""Fetching the configured URL for GET /hit, with libcurl (pycurl).

libcurl does the HTTP work in C with the GIL released, which is what keeps a hit cheap in a
process whose threads share one interpreter (a third of the CPU that requests took). Each server
thread has its own curl handle, since a handle must not be used by two threads at once; the handle
keeps its connections, so a connection to the upstream is opened once per thread and reused.
"""

import logging
import math
import socket
import threading
from typing import NamedTuple
from urllib.parse import urlsplit

import certifi
import pycurl

from protocol.addresses import PRIVATE_KINDS, is_private_address

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
USER_AGENT = "distributed-config-worker/1"


class UpstreamError(Exception):
    """GET /hit could not get a usable answer from the upstream; the message says why."""


class UpstreamUnreachable(UpstreamError):
    """No connection, a broken answer, or too many redirects."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect or answer in time."""


class UpstreamTooLarge(UpstreamError):
    """The upstream body is larger than the cap; it was not read past the cap."""


class UpstreamBlocked(UpstreamError):
    """The upstream resolves to a private, loopback, link-local or reserved address."""


class UpstreamResponse(NamedTuple):
    status: int
    body: bytes
    content_type: str | None


def without_query(url: str) -> str:
    # Error messages and logs name the upstream without its query, which may carry a token.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class _Body:
    """Collects the body for libcurl's write callback, refusing it past the cap."""

    __slots__ = ("chunks", "size", "cap", "too_large")

    def __init__(self, cap: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.cap = cap
        self.too_large = False

    def write(self, chunk: bytes) -> int | None:
        self.size += len(chunk)
        if self.size > self.cap:
            self.too_large = True
            return 0  # anything but len(chunk) makes libcurl stop with a write error
        self.chunks.append(chunk)
        return None


class _Transfer:
    """One thread's curl handle and the address it last refused, if any."""

    def __init__(self, client: "UpstreamClient") -> None:
        self.refused: str | None = None
        handle = pycurl.Curl()
        # Threads must not get signals from libcurl (its DNS timeout would use SIGALRM).
        handle.setopt(pycurl.NOSIGNAL, 1)
        handle.setopt(pycurl.FOLLOWLOCATION, 1)
        handle.setopt(pycurl.MAXREDIRS, MAX_REDIRECTS)
        # Only web URLs, on the first request and on every redirect.
        web = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
        handle.setopt(pycurl.PROTOCOLS, web)
        handle.setopt(pycurl.REDIR_PROTOCOLS, web)
        handle.setopt(pycurl.CONNECTTIMEOUT_MS, math.ceil(client.connect_timeout * 1000))
        # libcurl has no per-read timeout: an upstream that sends nothing (less than a byte a
        # second) for the read timeout, in whole seconds, is given up on; and the whole fetch is
        # bounded by the two timeouts together, so a trickling upstream cannot hold a thread.
        handle.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        handle.setopt(pycurl.LOW_SPEED_TIME, client.read_timeout_seconds)
        handle.setopt(
            pycurl.TIMEOUT_MS,
            math.ceil((client.connect_timeout + client.read_timeout_seconds) * 1000),
        )
        # A declared length over the cap is refused before the body is read.
        handle.setopt(pycurl.MAXFILESIZE_LARGE, client.max_body_bytes)
        handle.setopt(pycurl.USERAGENT, USER_AGENT)
        # Fetch the URL as configured: no proxy from the environment, and the certificates of
        # certifi (the same as the agent's) rather than whatever the system has.
        handle.setopt(pycurl.PROXY, "")
        handle.setopt(pycurl.CAINFO, certifi.where())
        if client.block_private:
            handle.setopt(pycurl.OPENSOCKETFUNCTION, self._open_public_socket)
        self.handle = handle

    def _open_public_socket(self, purpose: int, address: tuple) -> socket.socket | int:
        # Called for every connection libcurl opens, redirects included, with the address it is
        # about to connect to: checking that address, not a name, leaves no gap for a name that
        # resolves differently the second time.
        family, socktype, protocol, peer = address
        if is_private_address(peer[0]):
            self.refused = peer[0]
            return pycurl.SOCKET_BAD
        return socket.socket(family, socktype, protocol)


class UpstreamClient:
    """GETs a URL with timeouts, a redirect limit and a body cap, over kept-alive connections."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_body_bytes: int,
        block_private: bool = False,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # libcurl counts the read timeout in whole seconds.
        self.read_timeout_seconds = max(1, math.ceil(read_timeout))
        self.max_body_bytes = max_body_bytes
        self.block_private = block_private
        self._local = threading.local()

    def _transfer(self) -> _Transfer:
        transfer = getattr(self._local, "transfer", None)
        if transfer is None:
            transfer = self._local.transfer = _Transfer(self)
        return transfer

    def fetch(self, url: str) -> UpstreamResponse:
        """GET `url`; raise an UpstreamError subclass when no usable answer comes back."""
        transfer = self._transfer()
        handle = transfer.handle
        body = _Body(self.max_body_bytes)
        transfer.refused = None
        try:
            handle.setopt(pycurl.URL, url)
        except (ValueError, UnicodeEncodeError, pycurl.error):
            # A NUL or a character libcurl cannot take: nothing to fetch.
            raise UpstreamUnreachable(
                f"upstream {without_query(url)!a} is not a URL libcurl can fetch"
            ) from None
        handle.setopt(pycurl.WRITEFUNCTION, body.write)
        try:
            handle.perform()
        except pycurl.error as exc:
            code, message = exc.args
            raise self._failure(code, message, body, transfer.refused, url) from None
        finally:
            # The callback holds the body; drop it with this hit, not with the next one.
            handle.setopt(pycurl.WRITEFUNCTION, _discard)
        return UpstreamResponse(
            status=handle.getinfo(pycurl.RESPONSE_CODE),
            body=b"".join(body.chunks),
            content_type=_content_type(handle, url),
        )

    def _failure(
        self, code: int, message: str, body: _Body, refused: str | None, url: str
    ) -> UpstreamError:
        shown = without_query(url)
        if refused is not None:
            # The address goes to the worker's log only: the message travels back to whoever
            # asked (a pre-flight's caller), who should not learn where the network leads.
            logger.warning("upstream %s: connection to %s refused (non-public)", shown, refused)
            return UpstreamBlocked(
                f"upstream {shown} resolves to a private address ({PRIVATE_KINDS}), refused "
                "by WORKER_BLOCK_PRIVATE_UPSTREAMS"
            )
        if body.too_large or code == pycurl.E_FILESIZE_EXCEEDED:
            return UpstreamTooLarge(
                f"upstream {shown} answered with a body over the {self.max_body_bytes} byte cap"
            )
        if code == pycurl.E_OPERATION_TIMEDOUT:
            # libcurl says which phase ran out of time only in its message.
            if message.startswith(("Connection timed out", "Resolving timed out", "Failed to")):
                return UpstreamTimeout(
                    f"upstream {shown} did not accept a connection within "
                    f"{self.connect_timeout:g} s"
                )
            return UpstreamTimeout(
                f"upstream {shown} did not answer within {self.read_timeout_seconds} s"
            )
        if code == pycurl.E_TOO_MANY_REDIRECTS:
            return UpstreamUnreachable(
                f"upstream {shown} redirected more than {MAX_REDIRECTS} times"
            )
        if code in (pycurl.E_COULDNT_CONNECT, pycurl.E_COULDNT_RESOLVE_HOST):
            return UpstreamUnreachable(f"upstream {shown} is unreachable: {message}")
        return UpstreamUnreachable(f"upstream {shown} sent no usable answer: {message}")


def _content_type(handle: pycurl.Curl, url: str) -> str | None:
    """The upstream's Content-Type, which is passed on as ours: printable ASCII only, as a
    header value must be (a byte that is not would break the answer to /hit)."""
    raw = handle.getinfo_raw(pycurl.CONTENT_TYPE)
    if raw is None:
        return None
    if not all(0x20 <= byte < 0x7F or byte == 0x09 for byte in raw):
        raise UpstreamUnreachable(
            f"upstream {without_query(url)} sent a Content-Type that is not printable ASCII"
        )
    return raw.decode("ascii")


def _discard(chunk: bytes) -> None:
    return None
