"""A listening socket per controller process, so that the kernel shares out the connections.

gunicorn's workers all accept from the one socket the arbiter listens on, and whichever process
wakes first takes what is queued: a burst of connections lands mostly on one process, which may
then run out of open files (every held watch is a socket) while another holds few. With
SO_REUSEPORT each process listens on a socket of its own, bound to the same address, and the
kernel hashes each new connection to one of those sockets, evenly.

The arbiter still binds the address first as it always did, without SO_REUSEPORT, so a port that
another program (another controller, say) listens on is refused at start. Then, before any worker
starts, it stops listening on that socket but keeps it bound (`stop_listening`): the socket holds
the port and is outside the SO_REUSEPORT group, since a connection the kernel hashed to a socket
that no process accepts from would wait forever. Each worker, a restarted one too, finds the
inherited socket not listening and binds its own next to it (`own_listeners`); SO_REUSEADDR lets
it bind next to a socket that does not listen, and SO_REUSEPORT next to its siblings'.

What SO_REUSEPORT costs: the connections queued on one process's socket, not yet accepted, go
with that socket when the process exits (they are reset, and their clients connect again), where
a shared socket kept them for the other processes. So do those queued behind a stuck process until
gunicorn kills it (CONTROLLER_TIMEOUT). The sysctl net.ipv4.tcp_migrate_req=1 (Linux 5.14) has the
kernel move them to another process's socket instead.

Linux only: connect() to an AF_UNSPEC address is how a listening socket stops listening there.
Elsewhere, or without SO_REUSEPORT, the inherited socket keeps listening and the workers accept
from it, as before.
"""

import ctypes
import logging
import socket
import sys

logger = logging.getLogger("apps.ops")

INET = (socket.AF_INET, socket.AF_INET6)


def available() -> bool:
    """Whether a socket per process can be had here."""
    if sys.platform != "linux" or not hasattr(socket, "SO_REUSEPORT"):
        return False
    try:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        return False
    return True


def listening(sock) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def stop_listening(arbiter) -> None:
    """gunicorn's when_ready hook, in the arbiter before it starts a worker: its TCP sockets stop
    listening and stay bound. On any failure a socket keeps listening, and the workers share it.

    One process has nothing to share out, and its socket, kept listening, queues connections
    while gunicorn restarts the process, where a socket of its own would go with it. Sockets
    that systemd passed in are systemd's too, and stay as they are."""
    if arbiter.num_workers < 2 or getattr(arbiter, "systemd", False) or not available():
        return
    libc = ctypes.CDLL(None, use_errno=True)
    # A struct sockaddr of zeros: its family is AF_UNSPEC (0).
    unspecified = ctypes.create_string_buffer(16)
    for listener in arbiter.LISTENERS:
        if listener.family not in INET:
            continue
        if libc.connect(listener.fileno(), unspecified, len(unspecified)) != 0:
            logger.warning(
                "%s stays one socket shared by every process: %s",
                listener,
                OSError(ctypes.get_errno(), "cannot stop listening on it"),
            )


def own_listeners(inherited: list) -> list:
    """The sockets a worker serves from: its own in place of each inherited TCP socket that the
    arbiter stopped listening on, the inherited one otherwise."""
    return [
        own_listener(sock) if sock.family in INET and not listening(sock) else sock
        for sock in inherited
    ]


def own_listener(inherited) -> socket.socket:
    """A socket bound where `inherited` is, with its options, in the SO_REUSEPORT group. It is
    not listening yet: uvicorn listens on it once the application has started, so the kernel
    hashes connections to this process only when it can take them."""
    sock = socket.socket(inherited.family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if inherited.family == socket.AF_INET6:
        # [::] takes IPv4 too unless the system says otherwise; the same as the arbiter's.
        v6only = inherited.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    # The address the arbiter bound: a host name in --bind was resolved once, there.
    sock.bind(inherited.getsockname())
    sock.setblocking(False)
    return sock
