"""Hostile input: schemathesis over the controller's own OpenAPI schema, random pushes to the
worker, and bodies and headers far over any sane size."""

import contextlib
import json
import socket
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apps.agents.models import Agent
from apps.agents.services import issue_registration_token, register_agent
from tests.conftest import ADMIN_PASSWORD
from tests.e2e.conftest import INTERNAL_KEY, Admin
from tests.e2e.reliability import record
from tests.e2e.security import record_attack
from tests.support.metrics import sample
from tests.support.processes import server_errors
from tests.support.worker import config_body, signed_headers

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

AGENT_PATHS = {"/config/version", "/config/agent", "/agent/heartbeat", "/agent/preflight"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
MAX_EXAMPLES = 25
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def fuzz_operation(operation, url: str, credentials: str, calls: dict, failures: list) -> None:
    """Up to MAX_EXAMPLES generated requests to one operation, each checked against the schema."""

    @FUZZ
    @given(case=operation.as_strategy())
    def fuzz(case):
        if isinstance(case.query, dict) and isinstance(case.query.get("wait"), int):
            # A held watch only costs time here; its hold is tested elsewhere.
            case.query["wait"] = min(case.query["wait"], 1)
        if isinstance(case.body, dict) and isinstance(case.body.get("timeout_seconds"), int):
            # Likewise a pre-flight's wait for its agents (tested in test_preflight_api.py).
            case.body["timeout_seconds"] = min(case.body["timeout_seconds"], 1)
        plan = case.body.get("rollout") if isinstance(case.body, dict) else None
        if isinstance(plan, dict) and plan.get("preflight") is True:
            # A plan's pre-flight waits 10 s for the agent here, which holds no watch to hear it
            # (the refusal is tested in test_rollout_health.py and its e2e twin).
            plan["preflight"] = False
        response = case.call(base_url=url, headers={"Authorization": credentials}, timeout=20)
        calls["count"] += 1
        calls["5xx"] += response.status_code >= 500
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # noqa: BLE001 - schemathesis raises a group of failures
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:1500])

    fuzz()


@pytest.mark.timeout(240)
def test_schemathesis_over_the_openapi_schema(stack, upstream, admin_user):
    _, url = stack.controller(None)
    admin = Admin(url)
    assert admin.create(upstream.url("/text")).status_code == 201
    agent_token = register_agent(token=issue_registration_token()[0])[1]
    schema = schemathesis.openapi.from_url(f"{url}/api/schema/")
    failures: list[str] = []
    calls = {"count": 0, "5xx": 0}

    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in AGENT_PATHS:
            credentials = f"Bearer {agent_token}"
        elif operation.path == "/agent/register":
            credentials = f"Bearer {issue_registration_token()[0]}"
        else:
            credentials = admin.session.headers["Authorization"]
        if operation.path == "/config/admin/preflight":
            # A pre-flight waits up to its timeout_seconds for live agents' answers, and the
            # agent here holds no watch: with no agent live, every valid body is 409 at once.
            Agent.objects.update(last_seen=None)

        fuzz_operation(operation, url, credentials, calls, failures)

    assert not failures, "\n\n".join(failures[:10])
    assert calls["5xx"] == 0
    counted_5xx = server_errors(url)
    assert counted_5xx == 0
    record(
        "hostile-input",
        f"schemathesis: {calls['count']} generated requests over every operation of "
        f"/api/schema/ with admin and agent credentials, no 5xx, every answer as the schema "
        f"says.",
        outcomes={
            "as the schema says": calls["count"] - len(failures),
            "not as the schema says": len(failures),
        },
        failed_outcomes=["not as the schema says"],
        unexpected_5xx=max(calls["5xx"], counted_5xx),
        schemathesis_max_examples=MAX_EXAMPLES,
    )


def test_random_pushes_to_the_worker_change_nothing(stack):
    _, worker = stack.worker()
    body = json.dumps(config_body(version=3)).encode()
    assert requests.post(f"{worker}/config", data=body, headers=signed_headers(body, INTERNAL_KEY))
    held = requests.get(f"{worker}/config", timeout=5).json()
    session = requests.Session()
    statuses: list[int] = []
    # What requests can send: printable ASCII, no surrounding whitespace.
    header_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=200)
    bodies = st.one_of(
        st.binary(max_size=2000),
        st.dictionaries(
            st.text(max_size=20),
            st.recursive(
                st.none() | st.integers() | st.text(max_size=50), lambda x: st.lists(x, max_size=3)
            ),
            max_size=6,
        ).map(lambda d: json.dumps(d).encode()),
        st.builds(lambda v: json.dumps(config_body(version=v)).encode(), st.integers()),
    )

    @settings(max_examples=200, deadline=None, database=None)
    @given(
        body=bodies,
        signature=st.none() | header_text,
        key=st.none() | header_text,
        content_type=header_text,
    )
    def fuzz(body, signature, key, content_type):
        headers = {"Content-Type": content_type}
        if signature is not None:
            headers["X-Signature"] = signature
        if key is not None:
            headers["X-Internal-Key"] = key
        answer = session.post(f"{worker}/config", data=body, headers=headers, timeout=5)
        statuses.append(answer.status_code)
        assert answer.status_code in (400, 401, 413), (answer.status_code, answer.text)
        assert answer.headers["Content-Type"] == "application/json"

    fuzz()
    assert requests.get(f"{worker}/config", timeout=5).json() == held
    record(
        "hostile-input",
        f"Worker: {len(statuses)} random bodies and headers to POST /config, each refused "
        f"(400/401/413), the config held unchanged.",
        worker_random_pushes=len(statuses),
        worker_pushes_accepted=sum(1 for status in statuses if status < 300),
    )


def raw_request(port: int, data: bytes) -> bytes:
    """Send raw bytes and return what came back before the server hung up."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # The server may refuse and hang up before it has read everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        chunks = []
        try:
            # Up to the end of the answer's headers: a server may keep the connection open.
            while b"\r\n\r\n" not in b"".join(chunks) and (chunk := sock.recv(65536)):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def status_of(raw: bytes) -> int | None:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.") else None


def test_oversized_bodies_and_headers_are_refused_cleanly(stack, admin_user):
    _, url = stack.controller(None)
    _, worker = stack.worker()
    refused = {}
    big_body = b'{"email": "' + b"a" * (5 * 1024 * 1024) + b'", "password": "x"}'
    answer = requests.post(
        f"{url}/login", data=big_body, headers={"Content-Type": "application/json"}, timeout=30
    )
    refused["controller body 5 MiB"] = answer.status_code
    assert answer.status_code in (400, 413), answer.text[:300]

    big_push = b"{" + b" " * (1024 * 1024) + b"}"
    answer = requests.post(
        f"{worker}/config",
        data=big_push,
        headers=signed_headers(big_push, INTERNAL_KEY),
        timeout=30,
    )
    refused["worker body 1 MiB"] = answer.status_code
    assert answer.status_code == 413

    for name, base in (("controller", url), ("worker", worker)):
        port = int(base.rsplit(":", 1)[1])
        for path in ("/config/version", "/healthz" if name == "controller" else "/health"):
            raw = raw_request(
                port,
                f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * 100_000}\r\n\r\n".encode(),
            )
            status = status_of(raw)
            refused[f"{name} {path} 100 kB header"] = status or "closed"
            # Refused with a 4xx, or the connection closed: never a 5xx, never served.
            assert status is None or 400 <= status < 500, raw[:300]
            many = "".join(f"X-H{n}: v\r\n" for n in range(1000))
            raw = raw_request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
            status = status_of(raw)
            refused[f"{name} {path} 1000 headers"] = status or "closed"
            assert status is None or 400 <= status < 500, raw[:300]
    record(
        "hostile-input",
        "Oversized bodies (5 MiB to the controller, 1 MiB to the worker) and headers (one of "
        "100 kB, or 1000 of them) were refused with a 4xx or a closed connection.",
        oversized_refusals="; ".join(f"{k} -> {v}" for k, v in refused.items()),
        oversized_requests=len(refused),
        oversized_served=sum(1 for v in refused.values() if isinstance(v, int) and v < 400),
    )


def test_a_worker_refuses_private_upstreams_by_default(stack, admin_user):
    _, controller = stack.controller(None)
    # Unset: the worker's own default.
    _, worker = stack.worker(WORKER_BLOCK_PRIVATE_UPSTREAMS=None)
    targets = {
        "loopback": f"{controller}/metrics",
        "6to4 for 127.0.0.1": "http://[2002:7f00:1::]:9/",
        "NAT64 for 127.0.0.1": "http://[64:ff9b::7f00:1]:9/",
    }
    answers = {}
    for version, (name, url) in enumerate(targets.items(), start=2):
        body = json.dumps({**config_body(version=version), "config_url": url}).encode()
        pushed = requests.post(
            f"{worker}/config", data=body, headers=signed_headers(body, INTERNAL_KEY), timeout=10
        )
        assert pushed.status_code == 200, pushed.text
        hit = requests.get(f"{worker}/hit", timeout=30)
        answers[name] = hit.status_code
        assert hit.status_code == 502, (name, hit.status_code, hit.text[:300])
        assert "WORKER_BLOCK_PRIVATE_UPSTREAMS" in hit.json()["detail"]
        assert "dcs_" not in hit.text
    record_attack(
        "ssrf-private-upstream",
        "GET /hit refused each with 502 naming WORKER_BLOCK_PRIVATE_UPSTREAMS; nothing of the "
        "controller's /metrics came back",
        **answers,
    )


def test_request_bodies_over_the_cap_are_refused_unread(stack, admin_user):
    _, url = stack.controller(None)
    port = int(url.rsplit(":", 1)[1])
    results = {}
    # 300 MB declared: refused at once, having sent only the headers and 64 kB.
    for path in ("/healthz", "/login", "/config/version", "/config/agent"):
        method = "GET" if path.startswith("/config/") else "POST"
        started = time.monotonic()
        raw = raw_request(
            port,
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {300 * 1024 * 1024}\r\n\r\n".encode()
            + b"x" * 65536,
        )
        results[f"{method} {path} 300 MB declared"] = status_of(raw)
        assert status_of(raw) == 413, raw[:300]
        assert time.monotonic() - started < 10
    # Chunked, with no declared length: read up to the cap, then refused.
    chunk = b"x" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n"
    raw = raw_request(
        port,
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks,
    )
    results["POST /login 1.25 MiB chunked"] = status_of(raw)
    assert status_of(raw) == 413, raw[:300]
    # Within the cap, a chunked body still reaches the view whole.
    body = json.dumps({"email": admin_user.email, "password": ADMIN_PASSWORD}).encode()
    raw = raw_request(
        port,
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
    )
    assert status_of(raw) == 200, raw[:300]
    record_attack(
        "oversized-bodies",
        "413 before the body was read (declared length) or once the cap was passed (chunked); "
        "a body within the cap still served",
        **results,
    )


def test_a_hostile_upstream_or_url_is_a_clean_refusal(stack, upstream, admin_user):
    _, controller = stack.controller(None)
    _, worker = stack.worker()
    admin = Admin(controller)
    results = {}
    body = json.dumps(config_body(version=2, url=upstream.url("/bad-type"))).encode()
    assert requests.post(
        f"{worker}/config", data=body, headers=signed_headers(body, INTERNAL_KEY), timeout=10
    ).ok
    hit = requests.get(f"{worker}/hit", timeout=30)
    results["/hit, upstream Content-Type not UTF-8"] = hit.status_code
    assert hit.status_code == 502, hit.text[:300]
    assert "Content-Type" in hit.json()["detail"]
    for name, url in (
        ("NUL", "http://a.example/x\u0000y"),
        ("lone surrogate", "http://a.example/\ud800"),
    ):
        body = json.dumps(config_body(version=3, url=url)).encode()
        pushed = requests.post(
            f"{worker}/config", data=body, headers=signed_headers(body, INTERNAL_KEY), timeout=10
        )
        results[f"worker push, {name} in config_url"] = pushed.status_code
        assert pushed.status_code == 400, pushed.text[:300]
        created = admin.create(url)
        results[f"POST /config/admin, {name} in config_url"] = created.status_code
        assert created.status_code == 400, created.text[:300]
        assert "config_url" in created.json()
    assert admin.session.get(f"{controller}/config/admin", timeout=10).status_code == 404
    assert requests.get(f"{worker}/config", timeout=10).json()["version"] == 2
    record_attack(
        "hostile-upstream-and-urls",
        "502 for the upstream's broken Content-Type; 400 for a NUL or lone surrogate in "
        "config_url at the worker and the controller, nothing stored",
        **results,
    )


def test_deeply_nested_json_is_400_everywhere(stack, admin_user):
    _, url = stack.controller(None)
    admin = Admin(url)
    agent_token = register_agent(token=issue_registration_token()[0])[1]
    nested = b"[" * 50_000 + b"]" * 50_000
    calls = [
        ("post", "/login", {}),
        ("post", "/login/refresh", {}),
        ("post", "/logout", {}),
        ("post", "/agent/register", {"Authorization": f"Bearer {issue_registration_token()[0]}"}),
        ("post", "/agent/heartbeat", {"Authorization": f"Bearer {agent_token}"}),
        ("post", "/config/admin", dict(admin.session.headers)),
        ("put", "/config/admin", dict(admin.session.headers)),
        ("post", "/config/admin/rollback", dict(admin.session.headers)),
    ]
    statuses = {}
    for method, path, headers in calls:
        answer = requests.request(
            method,
            url + path,
            data=nested,
            headers={**headers, "Content-Type": "application/json"},
            timeout=30,
        )
        statuses[f"{method.upper()} {path}"] = answer.status_code
        assert answer.status_code == 400, (path, answer.status_code, answer.text[:300])
    record_attack(
        "nested-json",
        "400 from every endpoint that takes a body",
        **statuses,
    )


def test_the_fast_agent_paths_check_host_and_https(stack):
    agent_token = register_agent(token=issue_registration_token()[0])[1]
    bearer = {"Authorization": f"Bearer {agent_token}"}
    _, url = stack.controller(None, ALLOWED_HOSTS="127.0.0.1,config.example.com")
    results = {}
    for path in ("/config/version", "/config/agent"):
        answer = requests.get(url + path, headers={**bearer, "Host": "evil.example"}, timeout=10)
        results[f"{path} Host: evil.example"] = answer.status_code
        assert answer.status_code == 400, (path, answer.status_code, answer.text)
        assert requests.get(url + path, headers=bearer, timeout=10).status_code in (200, 404)
    _, secure = stack.controller(None, SECURE_SSL_REDIRECT="1")
    for path in ("/config/version?version=1", "/config/agent"):
        answer = requests.get(secure + path, headers=bearer, timeout=10, allow_redirects=False)
        results[f"{path} over http with SECURE_SSL_REDIRECT"] = answer.status_code
        assert answer.status_code == 301, (path, answer.status_code)
        assert answer.headers["Location"] == f"https://{secure.removeprefix('http://')}{path}"
    record_attack(
        "fast-paths-host-and-https",
        "400 for a Host outside ALLOWED_HOSTS; 301 to https with SECURE_SSL_REDIRECT, as every "
        "other path",
        **results,
    )


def open_stream(port: int, token: str) -> tuple[socket.socket, bytes]:
    """GET /config/stream on a raw connection; returns it with what came before the first
    event's end (the status line, the headers and, on 200, the current version's event)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"GET /config/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    received = b""
    while b"\n\n" not in received.partition(b"event: config")[2]:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
        if received.startswith(b"HTTP/1.1 503") and b"\r\n\r\n" in received:
            break
    return sock, received


def ended_with(sock: socket.socket, marker: bytes, timeout: float = 10) -> bool:
    """Whether the server sends `marker` and then ends the response (its last chunk) within
    `timeout`."""
    sock.settimeout(timeout)
    received = b""
    with contextlib.suppress(OSError):
        while not received.endswith(b"0\r\n\r\n") and (chunk := sock.recv(65536)):
            received += chunk
    sock.close()
    return marker in received and received.endswith(b"0\r\n\r\n")


def metric(url: str, name: str) -> float:
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_held_watches_are_capped_per_agent_and_per_process(stack):
    from apps.configs.actions import publish_config

    publish_config(config_url="http://upstream.example/task", pooling_interval=30)
    _, url = stack.controller(None, CONTROLLER_MAX_WATCHES="6")
    port = int(url.rsplit(":", 1)[1])
    tokens = [register_agent(token=issue_registration_token()[0])[1] for _ in range(3)]
    # 40 streams on one token, one after the other: each new one past the default cap of 4
    # ends that agent's oldest.
    streams = []
    for _ in range(40):
        sock, head = open_stream(port, tokens[0])
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        streams.append(sock)
    ended = [ended_with(sock, b"event: replaced") for sock in streams[:36]]
    assert all(ended), ended.count(False)
    assert metric(url, "controller_streams_open") == 4
    assert metric(url, 'controller_watch_limit_hits_total{limit="agent"}') == 36
    # The process holds at most 6: two more agents' streams fill it, the next is 503.
    others = [open_stream(port, tokens[1])[0] for _ in range(2)]
    sock, refused = open_stream(port, tokens[2])
    sock.close()
    assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
    assert b"retry-after: 5" in refused.lower()
    # A connection that ends stops counting at once: the refused agent gets in.
    others[0].close()
    deadline = time.monotonic() + 10
    while metric(url, "controller_streams_open") > 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    sock, admitted = open_stream(port, tokens[2])
    assert admitted.startswith(b"HTTP/1.1 200"), admitted[:200]
    for held in [*streams[36:], others[1], sock]:
        held.close()
    record_attack(
        "streams-per-token",
        "at most 4 streams were held for the token: each one past that ended the agent's "
        "oldest (event: replaced); past the process's cap of 6 a new stream got 503 with "
        "Retry-After, and one more was taken once a connection ended",
        streams_opened=40,
        oldest_ended=sum(ended),
        held_for_the_token=4,
        over_process_cap=503,
    )


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes `sock` within `timeout` (what it sent before is ignored)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_a_request_head_not_sent_in_time_is_closed(stack):
    controller, url = stack.controller(None, CONTROLLER_HEADER_TIMEOUT="1")
    port = int(url.rsplit(":", 1)[1])
    started = time.monotonic()
    slow = []
    for _ in range(30):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        slow.append(sock)
    # The next request on a kept-alive connection has the same time for its head.
    kept = socket.create_connection(("127.0.0.1", port), timeout=10)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    first = kept.recv(65536)
    assert first.startswith(b"HTTP/1.1 200"), first[:200]
    kept.sendall(b"GET /healthz HTTP/1.1\r\n")
    closed = [closed_by_server(sock, 10) for sock in [*slow, kept]]
    elapsed = time.monotonic() - started
    for sock in [*slow, kept]:
        sock.close()
    assert all(closed), closed.count(False)
    assert elapsed < 8, elapsed
    # A client that sends its head in time is served as ever.
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    # Each closed connection is counted; the log says how many in one line per process and
    # burst, not one line each.
    metrics_text = requests.get(f"{url}/metrics", timeout=10).text
    assert sample(metrics_text, "controller_head_timeouts_total") == len(closed)
    lines = [line for line in controller.output().splitlines() if "no whole request head" in line]
    assert 1 <= len(lines) <= 2, lines
    record_attack(
        "slow-request-head",
        "every connection was closed by the controller once CONTROLLER_HEADER_TIMEOUT (1 s "
        "here) had passed without a whole request head, also on a kept-alive connection; a "
        "whole request was served",
        connections=len(closed),
        closed=sum(closed),
        closed_within_s=round(elapsed, 1),
    )
