"""The worker's side of health-gated rollouts: hits counted per config version (GET /health) and
POST /preflight, which fetches a URL without applying it."""

import json

import pytest
import requests

from tests.support.processes import free_port
from tests.support.upstream import UpstreamServer
from tests.support.worker import KEY, WorkerProcess, call, config_body, push, signed_headers
from worker.app import HIT_VERSIONS_KEPT, WorkerApp


@pytest.fixture(scope="module")
def upstream():
    with UpstreamServer() as server:
        yield server


def hits(app) -> dict:
    return call(app, "GET", "/health").json()["hits"]


def preflight(app, body, headers=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(app, "POST", "/preflight", raw, signed_headers(raw) if headers is None else headers)


# Hits per version


def test_health_shows_no_hits_before_any():
    assert hits(WorkerApp(internal_key=KEY)) == {}


def test_hits_are_counted_per_version_as_ok_or_failed(upstream):
    app = WorkerApp(internal_key=KEY, read_timeout=1)
    push(app, config_body(1, url=upstream.url("/text")))
    for _ in range(3):
        assert call(app, "GET", "/hit").status_code == 200
    # A 404 from the upstream is the upstream's answer, not a failure of the version.
    push(app, config_body(2, url=upstream.url("/missing")))
    assert call(app, "GET", "/hit").status_code == 404
    push(app, config_body(3, url=upstream.url("/broken")))
    assert call(app, "GET", "/hit").status_code == 500
    assert call(app, "GET", "/hit").status_code == 500
    # The worker's own 502 (nothing listens) and 502 (no final status) count as failed too.
    push(app, config_body(4, url=f"http://127.0.0.1:{free_port()}/"))
    assert call(app, "GET", "/hit").status_code == 502
    push(app, config_body(5, url=upstream.url("/switching")))
    assert call(app, "GET", "/hit").status_code == 502

    assert hits(app) == {
        "1": {"ok": 3, "failed": 0},
        "2": {"ok": 1, "failed": 0},
        "3": {"ok": 0, "failed": 2},
        "4": {"ok": 0, "failed": 1},
        "5": {"ok": 0, "failed": 1},
    }


def test_a_timeout_counts_as_failed(upstream):
    app = WorkerApp(internal_key=KEY, read_timeout=1)
    push(app, config_body(1, url=upstream.url("/slow")))
    upstream.release.clear()
    try:
        assert call(app, "GET", "/hit").status_code == 504
    finally:
        upstream.release.set()

    assert hits(app) == {"1": {"ok": 0, "failed": 1}}


def test_a_hit_before_any_config_is_counted_for_no_version():
    app = WorkerApp(internal_key=KEY)

    assert call(app, "GET", "/hit").status_code == 503

    assert hits(app) == {}


def test_only_the_newest_versions_keep_their_counts(upstream):
    app = WorkerApp(internal_key=KEY)
    for version in range(1, HIT_VERSIONS_KEPT + 3):
        push(app, config_body(version, url=upstream.url("/text")))
        call(app, "GET", "/hit")

    counts = hits(app)

    assert len(counts) == HIT_VERSIONS_KEPT
    assert min(int(v) for v in counts) == 3
    assert counts[str(HIT_VERSIONS_KEPT + 2)] == {"ok": 1, "failed": 0}


# POST /preflight


def test_preflight_reports_the_upstream_status_and_leaves_the_config_alone(upstream):
    app = WorkerApp(internal_key=KEY)
    push(app, config_body(4, url=upstream.url("/text")))
    before = call(app, "GET", "/config").json()

    response = preflight(app, {"config_url": upstream.url("/broken")})

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == 500
    assert body["error"] is None
    assert body["elapsed_ms"] >= 0
    assert call(app, "GET", "/config").json() == before
    # A pre-flight is not a hit of any version.
    assert hits(app) == {}


def test_preflight_without_any_config_works():
    app = WorkerApp(internal_key=KEY, connect_timeout=1)
    port = free_port()

    response = preflight(app, {"config_url": f"http://127.0.0.1:{port}/"})

    assert response.status_code == 200
    body = response.json()
    assert body["status"] is None
    assert "unreachable" in body["error"]
    assert call(app, "GET", "/config").status_code == 404


def test_preflight_keeps_the_size_cap(upstream):
    app = WorkerApp(internal_key=KEY, max_body_bytes=1000)

    body = preflight(app, {"config_url": upstream.url("/big?5000")}).json()

    assert body["status"] is None
    assert "1000 byte cap" in body["error"]


def test_preflight_keeps_the_time_limit(upstream):
    app = WorkerApp(internal_key=KEY, read_timeout=1)
    upstream.release.clear()
    try:
        body = preflight(app, {"config_url": upstream.url("/slow")}).json()
    finally:
        upstream.release.set()

    assert body["status"] is None
    assert "did not answer within 1 s" in body["error"]


def test_preflight_keeps_the_private_address_block(upstream):
    app = WorkerApp(internal_key=KEY, block_private_upstreams=True)

    body = preflight(app, {"config_url": upstream.url("/text")}).json()

    assert body["status"] is None
    assert "resolves to a private address" in body["error"]


def test_a_refused_name_does_not_print_the_address_it_resolved_to(upstream):
    app = WorkerApp(internal_key=KEY, block_private_upstreams=True)
    by_name = upstream.url("/text").replace("127.0.0.1", "localhost")

    body = preflight(app, {"config_url": by_name}).json()

    assert body["status"] is None
    assert "resolves to a private address" in body["error"]
    assert "127.0.0.1" not in body["error"]
    assert "::1" not in body["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "detail"),
        (b"[1]", "detail"),
        ({}, "config_url"),
        ({"config_url": "ftp://example.com/"}, "config_url"),
        ({"config_url": "http://user:pw@example.com/"}, "config_url"),
        ({"config_url": 5}, "config_url"),
    ],
)
def test_bad_preflight_body_is_400(body, field):
    response = preflight(WorkerApp(internal_key=KEY), body)

    assert response.status_code == 400
    assert field in response.json()


def test_preflight_needs_the_signature(upstream):
    app = WorkerApp(internal_key=KEY)
    raw = json.dumps({"config_url": upstream.url("/text")}).encode()
    requests_before = upstream.requests

    unsigned = call(app, "POST", "/preflight", raw, {"Content-Type": "application/json"})
    wrong = preflight(app, raw, signed_headers(raw, key="not-the-key"))

    assert unsigned.status_code == 401
    assert wrong.status_code == 401
    assert upstream.requests == requests_before


def test_preflight_is_not_a_get():
    response = call(WorkerApp(internal_key=KEY), "GET", "/preflight")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_real_worker_counts_hits_and_answers_preflight(tmp_path, upstream):
    with WorkerProcess(tmp_path, env={"WORKER_BLOCK_PRIVATE_UPSTREAMS": "0"}) as worker:
        assert worker.push(config_body(2, url=upstream.url("/broken"))).status_code == 200
        for _ in range(4):
            assert worker.hit().status_code == 500
        raw = json.dumps({"config_url": upstream.url("/text")}).encode()

        answer = requests.post(
            worker.url("/preflight"), data=raw, headers=signed_headers(raw), timeout=10
        )
        health = requests.get(worker.url("/health"), timeout=5).json()

    assert answer.status_code == 200
    assert answer.json()["status"] == 200
    assert health["hits"] == {"2": {"ok": 0, "failed": 4}}
    assert health["config_version"] == 2
