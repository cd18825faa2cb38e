"""The worker as it runs: `manage.py run_worker` in a subprocess, with a local upstream server."""

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support.processes import ROOT, dead_port, free_port, wait_until
from tests.support.upstream import UpstreamServer
from tests.support.worker import (
    KEY,
    WorkerProcess,
    config_body,
    signed_headers,
    worker_env,
)

_versions = itertools.count(1)


@pytest.fixture(scope="module")
def upstream():
    with UpstreamServer() as server:
        yield server


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    env = {"WORKER_READ_TIMEOUT": "0.3", "WORKER_MAX_BODY_BYTES": "200000", "WORKER_THREADS": "8"}
    with WorkerProcess(tmp_path_factory.mktemp("worker"), env) as process:
        yield process


def point_at(worker: WorkerProcess, url: str) -> int:
    """Push the next version with `url`; return that version."""
    version = next(_versions)
    response = worker.push(config_body(version, url=url))
    assert response.status_code == 200, response.text
    assert response.json() == {"applied": True, "version": version}
    return version


@pytest.mark.parametrize(
    ("path", "status", "body", "content_type"),
    [
        ("/text", 200, b"203.0.113.7\n", "text/plain; charset=utf-8"),
        ("/json", 200, b'{"ok": true}', "application/json"),
        ("/missing", 404, b"no such thing", "text/plain"),
        ("/broken", 500, b"upstream failed", "text/html"),
    ],
)
def test_hit_passes_the_upstream_answer_through(worker, upstream, path, status, body, content_type):
    version = point_at(worker, upstream.url(path))

    response = requests.get(worker.url("/hit"))

    assert response.status_code == status
    assert response.content == body
    assert response.headers["Content-Type"] == content_type
    assert response.headers["X-Config-Version"] == str(version)


def test_hit_is_502_when_the_upstream_is_unreachable(worker):
    with dead_port() as port:
        point_at(worker, f"http://127.0.0.1:{port}/")
        response = requests.get(worker.url("/hit"), timeout=10)

    assert response.status_code == 502
    assert "unreachable" in response.json()["detail"]


def test_hit_is_504_when_the_upstream_is_too_slow(worker, upstream):
    point_at(worker, upstream.url("/slow"))

    started = time.monotonic()
    response = requests.get(worker.url("/hit"))

    assert response.status_code == 504
    assert "did not answer within 1 s" in response.json()["detail"]
    assert time.monotonic() - started < 3


def test_hit_is_502_when_the_body_passes_the_cap(worker, upstream):
    point_at(worker, upstream.url("/big?5000000"))

    response = requests.get(worker.url("/hit"))

    assert response.status_code == 502
    assert "200000 byte cap" in response.json()["detail"]
    assert "upstream error" in worker.log()


def test_get_config_shows_the_last_push(worker, upstream):
    version = point_at(worker, upstream.url("/text"))

    response = requests.get(worker.url("/config"))

    assert response.status_code == 200
    body = response.json()
    assert body["version"] == version
    assert body["config_url"] == upstream.url("/text")
    assert set(body) == {"config_url", "pooling_interval", "version", "uuid", "received_at"}
    assert requests.get(worker.url("/health")).json()["config_version"] == version


def test_pushes_are_authenticated(worker, upstream):
    point_at(worker, upstream.url("/text"))
    before = requests.get(worker.url("/config")).json()
    newer = config_body(next(_versions), url=upstream.url("/json"))

    assert worker.push(newer, key="wrong-key").status_code == 401
    plain = requests.post(worker.url("/config"), json=newer, headers={"X-Internal-Key": "nope"})
    assert plain.status_code == 401
    assert requests.post(worker.url("/config"), json=newer).status_code == 401
    assert requests.get(worker.url("/config")).json() == before

    # The right plain key too: by default only a signature proves a push.
    plain = requests.post(worker.url("/config"), json=newer, headers={"X-Internal-Key": KEY})
    assert plain.status_code == 401
    assert requests.get(worker.url("/config")).json() == before

    accepted = worker.push(newer)
    assert accepted.status_code == 200
    assert accepted.json() == {"applied": True, "version": newer["version"]}


def test_an_older_push_is_409(worker, upstream):
    # Two pushes, so that an older version exists (>= 1) whichever test ran before this one.
    point_at(worker, upstream.url("/text"))
    version = point_at(worker, upstream.url("/text"))

    response = worker.push(config_body(version - 1, url=upstream.url("/json")))

    assert response.status_code == 409
    assert requests.get(worker.url("/config")).json()["version"] == version


def test_a_push_over_64_kib_is_413(worker):
    body = config_body(next(_versions), padding="x" * 70_000)

    assert worker.push(body).status_code == 413


def test_concurrent_pushes_and_reads_end_on_the_highest_version(worker, upstream):
    first = next(_versions)
    versions = list(range(first, first + 60))
    for _ in versions[1:]:
        next(_versions)
    url = upstream.url("/text")
    going_back = []
    statuses = []
    done = threading.Event()

    def pusher(mine):
        with requests.Session() as session:
            for version in mine:
                raw = json.dumps(config_body(version, url=url)).encode()
                response = session.post(
                    worker.url("/config"), data=raw, headers=signed_headers(raw)
                )
                statuses.append(response.status_code)

    def reader():
        last = 0
        with requests.Session() as session:
            while not done.is_set():
                held = session.get(worker.url("/health"), timeout=10).json()["config_version"]
                # A worker that holds nothing yet (this test run alone) answers null: version 0.
                version = 0 if held is None else held
                if version < last:
                    going_back.append((last, version))
                last = version

    pushers = [threading.Thread(target=pusher, args=(versions[i::4],)) for i in range(4)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers + pushers:
        thread.start()
    for thread in pushers:
        thread.join()
    done.set()
    for thread in readers:
        thread.join()

    assert len(statuses) == len(versions) and set(statuses) <= {200, 409}, statuses
    assert requests.get(worker.url("/config")).json()["version"] == versions[-1]
    assert going_back == []


def test_unknown_paths_and_wrong_methods_are_json(worker):
    missing = requests.get(worker.url("/nope"))
    wrong = requests.delete(worker.url("/hit"))

    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not found."}
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "GET"
    assert "detail" in wrong.json()


def test_metrics_are_prometheus_text(worker, upstream):
    point_at(worker, upstream.url("/text"))
    requests.get(worker.url("/hit"))

    response = requests.get(worker.url("/metrics"))

    assert response.status_code == 200
    assert "worker_hits_total" in response.text
    assert "worker_upstream_latency_seconds_bucket" in response.text
    assert "worker_config_version" in response.text
    assert 'worker_config_pushes_total{result="applied"}' in response.text


def test_the_key_never_reaches_the_log(worker, upstream):
    # A push of its own, so the log holds an applied config whichever test ran before.
    version = point_at(worker, upstream.url("/text"))
    assert f"config applied v{version}" in worker.log()
    assert KEY not in worker.log()


# Other settings, other processes


def test_signature_required_and_private_upstreams_blocked_on_sqlite_defaults(tmp_path, upstream):
    # No DATABASE_URL: the embedded SQLite default, which the worker must never open. Both
    # protections are on without being asked for.
    port = free_port()
    env = {
        "DATABASE_URL": None,
        "WORKER_REQUIRE_SIGNATURE": None,
        "WORKER_BLOCK_PRIVATE_UPSTREAMS": None,
        "WORKER_BIND": f"127.0.0.1:{port}",
    }
    with WorkerProcess(tmp_path, env, port=port, bind_flag=False) as process:
        body = config_body(1, url=upstream.url("/text"))
        plain = requests.post(process.url("/config"), json=body, headers={"X-Internal-Key": KEY})
        signed = process.push(body)
        hit = requests.get(process.url("/hit"))

    assert plain.status_code == 401
    assert signed.status_code == 200
    assert hit.status_code == 502
    assert "WORKER_BLOCK_PRIVATE_UPSTREAMS" in hit.json()["detail"]
    assert not (tmp_path / "var" / "controller.sqlite3").exists()


def test_the_plain_key_is_taken_only_when_turned_on_and_then_with_a_warning(tmp_path, upstream):
    port = free_port()
    env = {"WORKER_REQUIRE_SIGNATURE": "0", "WORKER_BIND": f"127.0.0.1:{port}"}
    with WorkerProcess(tmp_path, env, port=port, bind_flag=False) as process:
        body = config_body(1, url=upstream.url("/text"))
        plain = requests.post(process.url("/config"), json=body, headers={"X-Internal-Key": KEY})
        log = process.log()

    assert plain.status_code == 200
    assert "WARNING" in log
    assert "WORKER_REQUIRE_SIGNATURE is off" in log
    assert KEY not in log


def test_sigterm_stops_the_worker_within_a_few_seconds(tmp_path):
    # WORKER_BIND names a port nobody listens on: the --bind flag must win.
    env = {"WORKER_BIND": f"127.0.0.1:{free_port()}"}
    with WorkerProcess(tmp_path, env) as process:
        with requests.Session() as session:  # a kept-alive client connection, as the agent has
            assert session.get(process.url("/hit")).status_code == 503
            assert session.get(process.url("/config")).status_code == 404

        started = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        returncode = process.process.wait(timeout=10)
        elapsed = time.monotonic() - started

    assert returncode == 0
    assert elapsed < 5


def test_sigterm_lets_a_hit_in_flight_finish(tmp_path):
    with UpstreamServer() as upstream, WorkerProcess(tmp_path) as process:
        assert process.push(config_body(1, url=upstream.url("/slow"))).status_code == 200
        answers = []
        in_flight = threading.Thread(
            target=lambda: answers.append(requests.get(process.url("/hit"), timeout=10))
        )
        in_flight.start()
        # The upstream has the hit's request and holds it until released.
        wait_until(lambda: upstream.requests == 1, timeout=10, message="the hit at the upstream")

        process.process.send_signal(signal.SIGTERM)
        # The port closes at once on SIGTERM: from then on the hit is one the worker must finish.
        wait_until(lambda: port_closed(process.port), timeout=10, message="the port closed")
        upstream.release.set()
        in_flight.join(10)
        returncode = process.process.wait(timeout=10)

    assert [(answer.status_code, answer.content) for answer in answers] == [(200, b"late")]
    assert returncode == 0


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def run_worker_to_exit(tmp_path, bind: str, env: dict | None = None):
    """`run_worker --bind BIND` expected to stop on its own; its exit code and output."""
    return subprocess.run(
        [sys.executable, "manage.py", "run_worker", "--bind", bind],
        cwd=ROOT,
        env=worker_env(tmp_path, env),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_missing_internal_key_exits_2_with_a_clear_message(tmp_path):
    result = run_worker_to_exit(tmp_path, f"127.0.0.1:{free_port()}", {"INTERNAL_KEY": None})

    assert result.returncode == 2
    assert "INTERNAL_KEY is not set" in result.stderr


def test_a_bad_bind_exits_2(tmp_path):
    result = run_worker_to_exit(tmp_path, "no-port-here")

    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr


def test_a_port_in_use_exits_1_with_a_clear_message(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_worker_to_exit(tmp_path, f"127.0.0.1:{port}")

    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use (Address already in use)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_another_worker_holds_exits_1_and_the_first_keeps_serving(tmp_path, worker):
    # The first worker's server binds with SO_REUSEPORT, which would let a second one share the
    # port and answer half of the requests with a different configuration.
    version = requests.get(worker.url("/health"), timeout=5).json()["config_version"]
    result = run_worker_to_exit(tmp_path, f"127.0.0.1:{worker.port}")

    assert result.returncode == 1, result.stderr
    assert f"port {worker.port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    for _ in range(20):
        assert requests.get(worker.url("/health"), timeout=5).json()["config_version"] == version


def test_oversized_headers_are_431_and_large_bodies_still_arrive(worker):
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 431 ")
    # A body is not held to the header limit: this one reaches the app, which names what is
    # missing from it.
    body = b'{"padding": "' + b"p" * 60_000 + b'"}'
    response = requests.post(worker.url("/config"), data=body, headers=signed_headers(body))
    assert response.status_code == 400
    assert "config_url" in response.json()


def test_hits_reuse_upstream_connections(worker, upstream):
    point_at(worker, upstream.url("/text"))
    before = upstream.connections

    with requests.Session() as session:
        for _ in range(40):
            assert session.get(worker.url("/hit")).status_code == 200

    # Each server thread keeps its own connection: at most one per thread is ever opened.
    assert upstream.connections - before <= 8


def test_the_worker_process_stops_when_the_main_process_is_killed(tmp_path):
    with WorkerProcess(tmp_path) as process:
        main = process.process.pid
        children = Path(f"/proc/{main}/task/{main}/children").read_text().split()
        assert len(children) == 1
        serving = int(children[0])

        os.kill(main, signal.SIGKILL)
        process.process.wait(timeout=5)

        # Left alone, the worker process would go on serving and hold the port.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{serving}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{serving}").exists()
        with pytest.raises(requests.ConnectionError):
            requests.get(process.url("/health"), timeout=2)
