"""GET /hit and the read-only endpoints of the worker's WSGI app, in process, against a local
upstream server."""

import contextlib
import socket
import ssl
import subprocess
import threading
import time

import pycurl
import pytest

from protocol.addresses import is_private_address
from tests.support.processes import dead_port
from tests.support.upstream import UpstreamServer
from tests.support.worker import KEY, call, config_body, push
from worker.app import WorkerApp
from worker.upstream import UpstreamClient


@pytest.fixture(scope="module")
def upstream():
    with UpstreamServer() as server:
        yield server


def configured(url: str, **options):
    app = WorkerApp(internal_key=KEY, **options)
    assert push(app, config_body(7, url=url)).status_code == 200
    return app


def test_hit_is_503_before_any_config():
    app = WorkerApp(internal_key=KEY)

    response = call(app, "GET", "/hit")

    assert response.status_code == 503
    assert "No configuration" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "status", "body", "content_type"),
    [
        ("/text", 200, b"203.0.113.7\n", "text/plain; charset=utf-8"),
        ("/json", 200, b'{"ok": true}', "application/json"),
        ("/missing", 404, b"no such thing", "text/plain"),
        ("/broken", 500, b"upstream failed", "text/html"),
    ],
)
def test_hit_passes_the_upstream_answer_through(upstream, path, status, body, content_type):
    app = configured(upstream.url(path))

    response = call(app, "GET", "/hit")

    assert response.status_code == status
    assert response.body == body
    assert response.headers["content-type"] == content_type
    assert response.headers["x-config-version"] == "7"


def test_hit_without_upstream_content_type_sends_none(upstream):
    response = call(configured(upstream.url("/no-type")), "GET", "/hit")

    assert response.status_code == 200
    assert response.body == b"raw"
    assert "content-type" not in response.headers


def test_hit_passes_204_through_without_a_body(upstream):
    response = call(configured(upstream.url("/empty")), "GET", "/hit")

    assert response.status_code == 204
    assert response.body == b""
    assert "content-length" not in response.headers


def test_hit_is_502_when_the_upstream_answers_with_no_final_status(upstream):
    response = call(configured(upstream.url("/switching")), "GET", "/hit")

    # A 101 with no final answer after it is no answer at all.
    assert response.status_code == 502
    assert "no usable answer" in response.json()["detail"]


def test_hit_follows_up_to_three_redirects(upstream):
    response = call(configured(upstream.url("/redirect/3")), "GET", "/hit")

    assert response.status_code == 200
    assert response.body == b"203.0.113.7\n"


def test_hit_refuses_a_fourth_redirect_with_502(upstream):
    response = call(configured(upstream.url("/redirect/4")), "GET", "/hit")

    assert response.status_code == 502
    assert "redirected more than 3 times" in response.json()["detail"]


def test_hit_is_502_when_the_upstream_is_unreachable():
    with dead_port() as port:
        response = call(configured(f"http://127.0.0.1:{port}/"), "GET", "/hit")

    assert response.status_code == 502
    assert "unreachable" in response.json()["detail"]
    assert response.headers["x-config-version"] == "7"


def test_hit_is_504_when_the_upstream_is_too_slow(upstream):
    # The read timeout counts in whole seconds: 0.2 s is rounded up to 1 s.
    app = configured(upstream.url("/slow"), read_timeout=0.2)

    started = time.monotonic()
    response = call(app, "GET", "/hit")

    assert response.status_code == 504
    assert "did not answer within 1 s" in response.json()["detail"]
    assert 0.9 < time.monotonic() - started < 3
    assert response.headers["x-config-version"] == "7"


def test_hit_is_504_when_the_upstream_does_not_accept_the_connection():
    # A listener whose accept queue is full drops further connection attempts unanswered.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = []
        for _ in range(3):
            waiting = socket.socket()
            waiting.setblocking(False)
            waiting.connect_ex(("127.0.0.1", port))
            queued.append(waiting)
        time.sleep(0.1)
        app = configured(f"http://127.0.0.1:{port}/", connect_timeout=0.3)

        started = time.monotonic()
        response = call(app, "GET", "/hit")
        elapsed = time.monotonic() - started
        for waiting in queued:
            waiting.close()

    assert response.status_code == 504
    assert "did not accept a connection within 0.3 s" in response.json()["detail"]
    assert elapsed < 2


def test_hit_refuses_an_upstream_certificate_it_cannot_verify(upstream, tmp_path):
    # A self-signed certificate: the fetch verifies TLS against certifi's authorities.
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def handshake() -> None:
            connection, _ = listener.accept()
            with contextlib.suppress(OSError), context.wrap_socket(connection, server_side=True):
                pass

        server = threading.Thread(target=handshake, daemon=True)
        server.start()
        response = call(configured(f"https://127.0.0.1:{port}/"), "GET", "/hit")
        server.join(5)

    assert response.status_code == 502
    assert "certificate" in response.json()["detail"]


def test_hit_ignores_proxies_from_the_environment(upstream, monkeypatch):
    # libcurl would otherwise send the GET to whatever http_proxy names.
    with dead_port() as port:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        response = call(configured(upstream.url("/text")), "GET", "/hit")

    assert response.status_code == 200
    assert response.body == b"203.0.113.7\n"


def test_hit_is_502_when_the_body_passes_the_cap(upstream):
    app = configured(upstream.url("/big?300000"), max_body_bytes=100_000)

    response = call(app, "GET", "/hit")

    assert response.status_code == 502
    assert "100000 byte cap" in response.json()["detail"]


def test_hit_is_502_when_the_declared_length_passes_the_cap(upstream):
    app = configured(upstream.url("/json"), max_body_bytes=5)

    response = call(app, "GET", "/hit")

    assert response.status_code == 502
    assert "byte cap" in response.json()["detail"]


def test_a_body_up_to_the_cap_is_passed_through(upstream):
    app = configured(upstream.url("/big?100000"), max_body_bytes=100_000)

    response = call(app, "GET", "/hit")

    assert response.status_code == 200
    assert response.body == b"x" * 100_000


def test_hits_reuse_one_upstream_connection(upstream):
    app = configured(upstream.url("/text"))
    before = upstream.connections

    for _ in range(5):
        assert call(app, "GET", "/hit").status_code == 200

    assert upstream.connections - before == 1


def test_hit_follows_a_newer_config(upstream):
    app = configured(upstream.url("/text"))
    push(app, config_body(8, url=upstream.url("/missing")))

    response = call(app, "GET", "/hit")

    assert response.status_code == 404
    assert response.headers["x-config-version"] == "8"


# Private upstreams


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_private_upstreams_are_refused_when_blocked(upstream, host):
    url = upstream.url("/text").replace("127.0.0.1", host)
    app = configured(url, block_private_upstreams=True)
    before = upstream.requests

    response = call(app, "GET", "/hit")

    assert response.status_code == 502
    assert "WORKER_BLOCK_PRIVATE_UPSTREAMS" in response.json()["detail"]
    assert upstream.requests == before


def test_private_upstreams_are_allowed_by_default(upstream):
    response = call(configured(upstream.url("/text")), "GET", "/hit")

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("address", "private"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("240.0.0.1", True),
        ("224.0.0.1", True),
        ("::1", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("::ffff:127.0.0.1", True),
        ("93.184.215.14", False),
        ("2606:4700:4700::1111", False),
    ],
)
def test_is_private_address(address, private):
    assert is_private_address(address) is private


def _address(ip: str) -> tuple:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, (ip, 80))


@pytest.mark.parametrize("ip", ["10.0.0.5", "127.0.0.1", "169.254.169.254", "::1"])
def test_every_connection_to_a_private_address_is_refused(ip):
    # The check runs on the address libcurl is about to connect to, for every connection
    # (redirects included), so a name cannot resolve to a public address first and a private
    # one later.
    client = UpstreamClient(
        connect_timeout=1, read_timeout=1, max_body_bytes=10, block_private=True
    )
    transfer = client._transfer()

    assert transfer._open_public_socket(0, _address(ip)) == pycurl.SOCKET_BAD
    assert transfer.refused == ip


def test_connections_to_public_addresses_are_opened():
    client = UpstreamClient(
        connect_timeout=1, read_timeout=1, max_body_bytes=10, block_private=True
    )
    opened = client._transfer()._open_public_socket(0, _address("93.184.215.14"))

    assert isinstance(opened, socket.socket)
    opened.close()


# The other endpoints


def test_health_answers_before_any_config():
    response = call(WorkerApp(internal_key=KEY), "GET", "/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["config_version"] is None
    assert body["uptime_s"] >= 0


def test_metrics_count_hits_by_upstream_status(upstream):
    app = configured(upstream.url("/text"))
    call(app, "GET", "/hit")
    call(app, "GET", "/hit")
    push(app, config_body(9, url=upstream.url("/missing")))
    call(app, "GET", "/hit")

    response = call(app, "GET", "/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.body.decode()
    assert 'worker_hits_total{upstream_status="200"} 2.0' in text
    assert 'worker_hits_total{upstream_status="404"} 1.0' in text
    assert "worker_upstream_latency_seconds_count 3.0" in text
    assert "worker_config_version 9.0" in text


def test_metrics_come_from_the_app_own_registry(upstream):
    first = configured(upstream.url("/text"))
    second = WorkerApp(internal_key=KEY)
    call(first, "GET", "/hit")

    text = call(second, "GET", "/metrics").body.decode()

    assert 'upstream_status="200"' not in text
    assert "worker_config_version 0.0" in text


@pytest.mark.parametrize("path", ["/", "/nope", "/hit/", "/config/admin"])
def test_unknown_paths_are_404_json(path):
    response = call(WorkerApp(internal_key=KEY), "GET", path)

    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/hit", "GET"),
        ("DELETE", "/config", "GET, POST"),
        ("PUT", "/health", "GET"),
        ("HEAD", "/metrics", "GET"),
    ],
)
def test_wrong_methods_are_405_json(method, path, allowed):
    response = call(WorkerApp(internal_key=KEY), method, path)

    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert "detail" in response.json()


@pytest.mark.parametrize(
    "options",
    [
        {"internal_key": ""},
        {"internal_key": KEY, "read_timeout": 0},
        {"internal_key": KEY, "connect_timeout": -1},
        {"internal_key": KEY, "max_body_bytes": 0},
    ],
)
def test_WorkerApp_refuses_unusable_settings(options):
    with pytest.raises(ValueError):
        WorkerApp(**options)
