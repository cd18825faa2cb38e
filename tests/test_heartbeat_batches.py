"""POST /agent/heartbeat on the ASGI front: answered at once, written in batches of one
statement, and nothing lost when the controller stops cleanly."""

import asyncio
import json
import signal

import pytest
import requests
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.agents import auth as agent_auth
from apps.agents.heartbeats import HeartbeatRecorder
from apps.agents.models import Agent
from apps.agents.services import (
    issue_registration_token,
    record_heartbeats,
    register_agent,
    revoke_agent,
)
from apps.configs import answers, front
from tests.support.asgi import call
from tests.support.processes import start_controller, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

WORKERS = [
    {"url": "http://127.0.0.1:8082", "ok": True, "version": 3},
    {"url": "http://10.0.0.7:8082", "ok": False, "version": None},
]


def new_agents(count: int) -> list[tuple[Agent, str]]:
    made = []
    for number in range(count):
        token, _ = issue_registration_token()
        made.append(register_agent(token=token, name=f"agent-{number}"))
    Agent.objects.update(last_seen=None)
    return made


async def post(app, token: str | None, body, content_type=b"application/json"):
    """One POST /agent/heartbeat through the ASGI app; (status, decoded body or None)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = [(b"content-type", content_type)] if content_type else []
    headers.append((b"host", b"localhost"))  # as every server sends it (ALLOWED_HOSTS)
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return await call(app, "POST", "/agent/heartbeat", headers, raw)


def with_app(scenario, **recorder):
    """Run `scenario(app)` against a fresh ASGI front, stopped cleanly afterwards."""

    async def run():
        app = front.WatchEndpoint(fallback=None)
        for name, value in recorder.items():
            setattr(app.heartbeats, name, value)
        try:
            return await scenario(app)
        finally:
            await app.heartbeats.stop()
            await app.hub.stop()

    return asyncio.run(run())


def test_a_heartbeat_is_204_at_once_and_stored_with_the_next_batch():
    ((agent, token),) = new_agents(1)

    async def scenario(app):
        status, _ = await post(app, token, {"applied_version": 3, "workers": WORKERS})
        assert status == 204
        # It should be written within a batch window (0.1 s), not only at shutdown.
        for _ in range(50):
            if app.heartbeats.recorded:
                break
            await asyncio.sleep(0.05)
        assert app.heartbeats.recorded == 1

    with_app(scenario, flush_seconds=0.1)
    agent.refresh_from_db()
    assert agent.applied_version == 3
    assert agent.workers == WORKERS
    assert agent.last_seen is not None


def test_a_watch_right_after_a_heartbeat_leaves_last_seen_to_the_batch():
    """After a change every agent reports and watches again at once: the watch must not write
    last_seen itself (10,000 single-row UPDATEs) when the heartbeat's batch writes it."""
    (reported, token), (silent, _) = new_agents(2)

    async def scenario(app):
        status, _ = await post(app, token, {"applied_version": 3, "workers": WORKERS})
        assert status == 204

    with_app(scenario, flush_seconds=0.1)
    reported.refresh_from_db()
    assert reported.last_seen is not None  # written by the batch
    with CaptureQueriesContext(connection) as queries:
        agent_auth.touch_last_seen(reported)
    assert [q["sql"] for q in queries.captured_queries] == []
    with CaptureQueriesContext(connection) as queries:
        agent_auth.touch_last_seen(silent)
    assert len(queries.captured_queries) == 1
    silent.refresh_from_db()
    assert silent.last_seen is not None


def test_many_agents_reporting_at_once_are_all_stored():
    agents = new_agents(60)

    async def scenario(app):
        answers = await asyncio.gather(
            *(
                post(app, token, {"applied_version": n, "workers": WORKERS[:1]})
                for n, (_, token) in enumerate(agents)
            )
        )
        assert [status for status, _ in answers] == [204] * len(agents)

    # A batch of 25: three statements for sixty reports.
    with_app(scenario, batch_size=25, flush_seconds=30)
    stored = {str(a.pk): a.applied_version for a in Agent.objects.all()}
    assert stored == {str(agent.pk): n for n, (agent, _) in enumerate(agents)}
    assert all(a.last_seen is not None for a in Agent.objects.all())


def test_unknown_revoked_or_missing_tokens_are_401_and_store_nothing():
    (agent, token), (revoked, revoked_token) = new_agents(2)
    revoke_agent(revoked)
    body = {"applied_version": 1, "workers": []}

    async def scenario(app):
        assert (await post(app, None, body))[0] == 401
        assert (await post(app, "agt_unknown", body))[0] == 401
        assert (await post(app, "not-an-agent-token", body))[0] == 401
        status, answer = await post(app, revoked_token, body)
        assert status == 401
        assert answer == {"detail": answers.REFUSED_AGENT}

    with_app(scenario)
    assert Agent.objects.filter(applied_version__isnull=False).count() == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "applied_version"),
        ({"applied_version": -1, "workers": []}, "applied_version"),
        ({"applied_version": 2**31, "workers": []}, "applied_version"),
        ({"applied_version": "3", "workers": []}, "applied_version"),
        ({"applied_version": True, "workers": []}, "applied_version"),
        ({"applied_version": 1}, "workers"),
        ({"applied_version": 1, "workers": "nope"}, "workers"),
        ({"applied_version": 1, "workers": [{"url": "not a url", "ok": True, "version": 1}]}, None),
        ({"applied_version": 1, "workers": [{"url": "http://a.example", "ok": "yes"}]}, None),
        ({"applied_version": 1, "workers": [{}] * 101}, "workers"),
        ([1, 2], "non_field_errors"),
    ],
)
def test_a_bad_body_is_400_by_field_and_stores_nothing(body, field):
    ((agent, token),) = new_agents(1)

    async def scenario(app):
        status, answer = await post(app, token, body)
        assert status == 400, answer
        assert (field or "workers") in answer

    with_app(scenario)
    agent.refresh_from_db()
    assert agent.applied_version is None
    assert agent.last_seen is None


def test_not_json_is_400_or_415_and_too_large_is_413(settings):
    ((agent, token),) = new_agents(1)
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 200_000

    async def scenario(app):
        for body in (b"{not json", b"\xff\xfe", b"[" * 100_000):
            status, answer = await post(app, token, body)
            assert status == 400
            assert answer["detail"].startswith("JSON parse error")
        status, answer = await post(app, token, b"applied_version=1", b"text/plain")
        assert status == 415
        big = {
            "applied_version": 1,
            "workers": [{**WORKERS[0], "url": "http://a.example/" + "x" * 2000}] * 99,
        }
        assert (await post(app, token, big))[0] == 413

    with_app(scenario)
    agent.refresh_from_db()
    assert agent.applied_version is None


def test_one_statement_stores_a_whole_batch():
    agents = new_agents(30)
    now = timezone.now()
    reports = {
        # Fourth: the hits since the previous report.
        str(agent.pk): (
            now,
            n,
            [{"url": f"http://w{n}.example", "ok": n % 2 == 0, "version": n}],
            [],
        )
        for n, (agent, _) in enumerate(agents)
    }
    with CaptureQueriesContext(connection) as queries:
        record_heartbeats(reports)
    assert len(queries) == 1
    for n, (agent, _) in enumerate(agents):
        agent.refresh_from_db()
        assert (agent.last_seen, agent.applied_version) == (now, n)
        assert agent.workers == [{"url": f"http://w{n}.example", "ok": n % 2 == 0, "version": n}]


def hit(version: int, ok: int, failed: int) -> dict:
    return {"version": version, "ok": ok, "failed": failed}


def test_reports_a_failed_write_could_not_store_are_kept_for_the_next_window():
    written: list[dict] = []
    failures = [DatabaseError("the database is down")]

    async def write(batch):
        if failures:
            raise failures.pop()
        written.append(batch)

    async def lookup(digests):
        return {}

    async def scenario():
        recorder = HeartbeatRecorder(
            write=write, lookup=lookup, touch=lookup, flush_seconds=30, batch_size=10
        )
        recorder.add("a", {"applied_version": 1, "workers": [], "hits": [hit(1, 3, 1)]})
        recorder.add("a", {"applied_version": 1, "workers": [], "hits": [hit(1, 4, 0)]})
        recorder.add("b", {"applied_version": 1, "workers": []})
        await recorder.flush()
        assert written == []
        # A newer report of "a" arrives meanwhile: it should win over the one kept, and carry
        # the hits no report has written yet (each counts those since the one before).
        recorder.add("a", {"applied_version": 2, "workers": [], "hits": [hit(2, 1, 1)]})
        await recorder.flush()
        assert len(written) == 1
        assert {agent: report[1] for agent, report in written[0].items()} == {"a": 2, "b": 1}
        assert written[0]["a"][3] == [hit(1, 7, 1), hit(2, 1, 1)]
        assert recorder.pending == {}

    asyncio.run(scenario())


def test_a_real_controller_records_heartbeats_and_writes_the_pending_ones_when_stopped():
    agents = new_agents(20)
    # A window far longer than the test: only the shutdown can write these.
    controller, url = start_controller(
        redis_url=None, workers=2, HEARTBEAT_FLUSH_SECONDS="600", HEARTBEAT_BATCH_SIZE="1000"
    )
    try:
        for n, (_, token) in enumerate(agents):
            answer = requests.post(
                f"{url}/agent/heartbeat",
                json={"applied_version": n + 1, "workers": WORKERS},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert answer.status_code == 204, answer.text
        assert Agent.objects.filter(applied_version__isnull=False).count() == 0
    finally:
        returncode = controller.stop(signal.SIGTERM, timeout=30)
    assert returncode == 0, controller.output()
    stored = {str(a.pk): (a.applied_version, a.workers) for a in Agent.objects.all()}
    assert stored == {str(agent.pk): (n + 1, WORKERS) for n, (agent, _) in enumerate(agents)}
    assert Agent.objects.filter(last_seen__isnull=True).count() == 0


@pytest.mark.bcrypt  # a controller process checks the admin's password
def test_heartbeats_through_a_real_controller_show_in_the_agent_list_within_a_second(
    admin_user,
):
    agents = new_agents(5)
    controller, url = start_controller(redis_url=None, workers=2)
    try:
        from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

        login = requests.post(
            f"{url}/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, timeout=5
        )
        admin = {"Authorization": f"Bearer {login.json()['access']}"}
        for _, token in agents:
            answer = requests.post(
                f"{url}/agent/heartbeat",
                json={"applied_version": 7, "workers": WORKERS[:1]},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert answer.status_code == 204

        def all_listed() -> bool:
            listed = requests.get(f"{url}/agents", headers=admin, timeout=5).json()["results"]
            return [row["applied_version"] for row in listed] == [7] * len(agents)

        wait_until(all_listed, timeout=5, interval=0.1, message="heartbeats in GET /agents")
    finally:
        controller.stop()
