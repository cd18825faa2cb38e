"""Fetching the configured URL for GET /hit.

One connection pool is shared by all server threads, so a connection to the upstream is opened once
and reused; each thread has its own requests.Session on top of it, because a Session's own state
(cookies, settings) is not meant to be shared between threads.
"""

import http.cookiejar
import ipaddress
import socket
import threading
import time
from typing import NamedTuple
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ReadTimeoutError

MAX_REDIRECTS = 3
CHUNK_BYTES = 64 * 1024
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


def is_private_address(address: str) -> bool:
    """True for any address that is not a public unicast one (private, loopback, reserved...)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or not ip.is_global
    )


def refuse_private_host(host: str, port: int) -> None:
    """Raise UpstreamBlocked if any address `host` resolves to is private.

    A name that does not resolve is left to the connection attempt, which reports it.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return
    for info in infos:
        address = info[4][0]
        if is_private_address(address):
            raise UpstreamBlocked(
                f"upstream host {host} resolves to the non-public address {address}, "
                "refused by WORKER_BLOCK_PRIVATE_UPSTREAMS"
            )


class _RefusePrivatePeer:
    # Checked on every new connection, redirects included: first every resolved address, then
    # the address actually connected to, so a name that re-resolves between the two is caught.
    def _new_conn(self) -> socket.socket:
        refuse_private_host(self._dns_host, self.port)
        sock = super()._new_conn()
        address = sock.getpeername()[0]
        if is_private_address(address):
            sock.close()
            raise UpstreamBlocked(
                f"upstream host {self.host} connected to the non-public address {address}, "
                "refused by WORKER_BLOCK_PRIVATE_UPSTREAMS"
            )
        return sock


class _PublicHTTPConnection(_RefusePrivatePeer, HTTPConnection):
    pass


class _PublicHTTPSConnection(_RefusePrivatePeer, HTTPSConnection):
    pass


class _PublicHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class PublicOnlyAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections refuse non-public upstream addresses."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _PublicHTTPConnectionPool,
            "https": _PublicHTTPSConnectionPool,
        }


def _without_query(url: str) -> str:
    # Error messages and logs name the upstream without its query, which may carry a token.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class UpstreamClient:
    """GETs a URL with timeouts, a redirect limit and a body cap, over pooled connections."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_body_bytes: int,
        block_private: bool = False,
        pool_size: int = 16,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_body_bytes = max_body_bytes
        adapter_class = PublicOnlyAdapter if block_private else HTTPAdapter
        # One pool per upstream host, up to pool_size kept-alive connections each: enough for
        # every server thread to hold one. max_retries=0: a failed GET is reported, not repeated.
        self._adapter = adapter_class(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.mount("http://", self._adapter)
            session.mount("https://", self._adapter)
            session.max_redirects = MAX_REDIRECTS
            # Fetch the URL as configured: no proxy or .netrc from the environment (which requests
            # would also look up on every call), and no cookies carried from one hit to the next.
            session.trust_env = False
            session.cookies.set_policy(_NoCookies())
            session.headers["User-Agent"] = USER_AGENT
            self._local.session = session
        return session

    def _prepared(self, session: requests.Session, url: str) -> requests.PreparedRequest:
        # Session.get() merges the session's settings into a new request on every call, which
        # costs about a fifth of a millisecond; the URL changes only with a push, so the
        # prepared request is kept per thread and copied for each hit.
        cached = getattr(self._local, "prepared", None)
        if cached is None or cached[0] != url:
            cached = (url, session.prepare_request(requests.Request("GET", url)))
            self._local.prepared = cached
        return cached[1].copy()

    def fetch(self, url: str) -> UpstreamResponse:
        """GET `url`; raise an UpstreamError subclass when no usable answer comes back."""
        shown = _without_query(url)
        # The read timeout bounds each wait for data; the deadline bounds an upstream that keeps
        # trickling bytes, so one slow upstream cannot hold a server thread indefinitely.
        deadline = time.monotonic() + self.connect_timeout + self.read_timeout
        session = self._session()
        try:
            with session.send(
                self._prepared(session, url),
                timeout=(self.connect_timeout, self.read_timeout),
                stream=True,
                allow_redirects=True,
            ) as response:
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > self.max_body_bytes:
                    raise self._too_large(shown)
                chunks = []
                size = 0
                for chunk in response.iter_content(CHUNK_BYTES):
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise self._too_large(shown)
                    if time.monotonic() > deadline:
                        raise UpstreamTimeout(
                            f"upstream {shown} did not finish its answer within "
                            f"{self.connect_timeout + self.read_timeout:g} s"
                        )
                    chunks.append(chunk)
                return UpstreamResponse(
                    status=response.status_code,
                    body=b"".join(chunks),
                    content_type=response.headers.get("Content-Type"),
                )
        except requests.exceptions.ConnectTimeout:
            raise UpstreamTimeout(
                f"upstream {shown} did not accept a connection within {self.connect_timeout:g} s"
            ) from None
        except requests.exceptions.ReadTimeout:
            raise self._read_timeout(shown) from None
        except requests.exceptions.TooManyRedirects:
            raise UpstreamUnreachable(
                f"upstream {shown} redirected more than {MAX_REDIRECTS} times"
            ) from None
        except requests.exceptions.ConnectionError as exc:
            # A read timeout while streaming the body arrives wrapped in a ConnectionError.
            if exc.args and isinstance(exc.args[0], ReadTimeoutError):
                raise self._read_timeout(shown) from None
            raise UpstreamUnreachable(f"upstream {shown} is unreachable: {_reason(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise UpstreamUnreachable(
                f"upstream {shown} sent no usable answer: {_reason(exc)}"
            ) from None

    def _too_large(self, shown: str) -> UpstreamTooLarge:
        return UpstreamTooLarge(
            f"upstream {shown} answered with a body over the {self.max_body_bytes} byte cap"
        )

    def _read_timeout(self, shown: str) -> UpstreamTimeout:
        return UpstreamTimeout(f"upstream {shown} did not answer within {self.read_timeout:g} s")


class _NoCookies(http.cookiejar.CookiePolicy):
    """A cookie policy that stores nothing, so each hit starts without cookies."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = False

    def set_ok(self, cookie, request) -> bool:
        return False

    def return_ok(self, cookie, request) -> bool:
        return False

    def domain_return_ok(self, domain, request) -> bool:
        return False

    def path_return_ok(self, path, request) -> bool:
        return False


def _reason(exc: Exception) -> str:
    # urllib3 nests the cause several levels deep; the innermost message is the readable one.
    inner: BaseException = exc
    while inner.args and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
    reason = getattr(inner, "reason", None)
    if isinstance(reason, BaseException):
        inner = reason
    return str(inner) or type(inner).__name__
