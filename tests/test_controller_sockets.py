"""run_controller's processes each listen on a socket of their own (apps/ops/listeners.py): the
kernel shares a burst of connections out among them evenly, a process that dies leaves new
connections to the others and its restarted successor binds again, and stopping still answers
every held watch at once."""

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import requests

from apps.ops import listeners
from tests.support.processes import (
    connections_per_process,
    listens_on,
    start_controller,
    wait_until,
    watches_held,
)

WATCHES = 300
# Each of two processes holds at least this share of a burst: the kernel's hash gives about half
# each, where from a socket both accept on whichever is free at the time takes them.
FAIR_SHARE = 0.3


def workers_of(arbiter: int) -> list[int]:
    return [
        int(pid) for pid in Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    ]


def start_two():
    """A controller of two processes, both listening (the first answers its health check before
    the second has started)."""
    controller, url = start_controller(
        redis_url=None, workers=2, CONTROLLER_MAX_WATCHES_PER_AGENT="0"
    )
    port = int(url.rsplit(":", 1)[1])
    wait_until(
        lambda: [listens_on(pid, port) for pid in workers_of(controller.popen.pid)] == [True] * 2,
        message="both processes listening",
        process=controller,
    )
    return controller, url, port


def open_watches(port: int, token: str, count: int) -> list[socket.socket]:
    """`count` held watches, each on a connection of its own, opened as fast as one thread can."""
    watch = (
        "GET /config/version?version=0&wait=60 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    opened = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(watch)
        opened.append(sock)
    return opened


def assert_shared_out(controller, port: int, url: str, count: int) -> dict[int, int]:
    wait_until(lambda: watches_held(url) == count, timeout=30, message=f"{count} watches held")
    shares = connections_per_process(controller.popen.pid, port)
    assert len(shares) == 2, shares
    assert min(shares.values()) >= FAIR_SHARE * count, shares
    return shares


@pytest.mark.skipif(not listeners.available(), reason="SO_REUSEPORT on Linux only")
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_burst_of_watches_is_shared_out_and_each_is_answered_503_on_stop(registered_agent):
    _, token = registered_agent
    controller, url, port = start_two()
    held = []
    try:
        # A burst while one process is busy (paused here, for long enough that the other takes
        # all it can): from a socket both accepted on, the other took every connection; now the
        # kernel queues each one for one of them, and the busy one takes its share after.
        busy = workers_of(controller.popen.pid)[0]
        os.kill(busy, signal.SIGSTOP)
        try:
            held = open_watches(port, token, WATCHES)
            time.sleep(2)
        finally:
            os.kill(busy, signal.SIGCONT)
        assert_shared_out(controller, port, url, WATCHES)

        os.killpg(controller.popen.pid, signal.SIGTERM)
        for sock in held:
            sock.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head and (more := sock.recv(4096)):
                head += more
            assert head.startswith(b"HTTP/1.1 503 "), head[:200]
            assert b"retry-after: 1" in head.lower(), head[:400]
    finally:
        for sock in held:
            sock.close()
        controller.stop()


@pytest.mark.skipif(not listeners.available(), reason="SO_REUSEPORT on Linux only")
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_killed_process_leaves_new_connections_to_the_other_and_its_successor_binds(
    registered_agent,
):
    _, token = registered_agent
    controller, url, port = start_two()
    arbiter = controller.popen.pid
    held = []
    try:
        victim, survivor = workers_of(arbiter)
        os.kill(victim, signal.SIGKILL)
        # Reaped: its socket closed with it, and the kernel hashes to the survivor's alone.
        wait_until(lambda: victim not in workers_of(arbiter), message="the killed one reaped")
        for _ in range(100):
            assert requests.get(f"{url}/healthz", timeout=5).status_code == 200

        # gunicorn starts a successor, which binds a socket of its own next to the survivor's.
        wait_until(
            lambda: (
                len(restarted := [pid for pid in workers_of(arbiter) if pid != survivor]) == 1
                and listens_on(restarted[0], port)
            ),
            timeout=30,
            message="a successor listening",
        )
        held = open_watches(port, token, WATCHES)
        shares = assert_shared_out(controller, port, url, WATCHES)
        assert survivor in shares and victim not in shares, shares
    finally:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
        controller.stop()


def free_address(family: socket.AddressFamily, host: str) -> tuple:
    try:
        with socket.socket(family) as sock:
            sock.bind((host, 0))
            return sock.getsockname()
    except OSError:
        pytest.skip(f"no {host} here")


@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_the_arbiters_socket_stops_listening_and_keeps_the_port_for_the_workers(family, host):
    class Arbiter:
        num_workers = 1
        LISTENERS = []

    with socket.socket(family) as inherited:
        inherited.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A port named, as --bind names one: one the kernel picked is let go with the listening.
        address = free_address(family, host)
        inherited.bind(address)
        inherited.listen()
        Arbiter.LISTENERS = [inherited]
        # One process: nothing to share out, so the socket it restarts on keeps queueing.
        Arbiter.num_workers = 1
        listeners.stop_listening(Arbiter)
        assert listeners.listening(inherited)
        Arbiter.num_workers = 2
        listeners.stop_listening(Arbiter)
        if not listeners.available():
            # Elsewhere than Linux: as before, one socket every process accepts from.
            assert listeners.listening(inherited)
            assert listeners.own_listeners([inherited]) == [inherited]
            return
        assert not listeners.listening(inherited)
        # Still bound: the port is not free for another program.
        with socket.socket(family) as other, pytest.raises(OSError):
            other.bind(address)
        [first] = listeners.own_listeners([inherited])
        [second] = listeners.own_listeners([inherited])
        with first, second:
            assert first.getsockname() == second.getsockname() == address
            first.listen()
            second.listen()
            with socket.create_connection(address[:2], timeout=5):
                pass
            # With the workers listening, not even with SO_REUSEADDR (only a socket that joins
            # their SO_REUSEPORT group, of the same user, could).
            with socket.socket(family) as other, pytest.raises(OSError):
                other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                other.bind(address)
