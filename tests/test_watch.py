"""The version watch: held requests answered at once on a change, and never a missed change."""

import asyncio
import json
import threading
import time

import pytest
import requests
from django.conf import settings
from django.core.cache import cache
from django.db import connection

from apps.agents.auth import forget_last_seen
from apps.agents.models import Agent
from apps.agents.services import issue_registration_token, register_agent, revoke_agent
from apps.configs import front, notifications, watch
from apps.configs import hub as hub_module
from apps.configs.actions import publish_config
from apps.configs.models import ConfigVersion
from apps.configs.services import state_key
from tests.support.processes import (
    restart_redis,
    server_errors,
    start_controller,
    start_redis,
    wait_until,
    watches_held,
)

pytestmark = [pytest.mark.django_db(transaction=True)]

URL = "http://upstream.example/task"
# A held watch answers its agent's own target; these hub tests hold one for this agent.
AGENT_ID = "00000000-0000-0000-0000-000000000001"


def content(version: int, pooling_interval: int, config_url: str = URL) -> dict:
    """The answer that carries version `version` with its content."""
    return {
        "version": version,
        "pooling_interval": pooling_interval,
        "config_url": config_url,
        "uuid": str(ConfigVersion.objects.get(version=version).uuid),
    }


@pytest.fixture
def agent_token():
    token, _ = issue_registration_token()
    return register_agent(token=token)[1]


async def call(
    app, token: str | None, query: str, path: str = "/config/version", headers=()
) -> tuple[int, dict, float]:
    """One GET through the ASGI app, as a server would make it."""
    headers = list(headers)
    if not any(name == b"host" for name, _ in headers):
        headers.append((b"host", b"localhost"))
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query.encode(),
        "headers": headers,
    }
    sent = []
    never = asyncio.Event()

    async def receive():
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    started = time.monotonic()
    await app(scope, receive, send)
    elapsed = time.monotonic() - started
    if path != "/config/version":
        return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]
    return sent[0]["status"], json.loads(sent[1]["body"]), elapsed


def closing_connection(function):
    """Threads of the test give their database connection back, as request threads do."""

    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            connection.close()

    return wrapper


def run_watch(query: str, token: str | None, during=None):
    """Run one watch on a fresh endpoint; `during(app)` runs in a thread while it is held."""

    async def scenario():
        app = front.WatchEndpoint(fallback=None)
        await app.hub.start()
        try:
            task = asyncio.ensure_future(call(app, token, query))
            if during is not None:
                # The watch must be held when `during` runs: a change made before would be
                # answered as a stale version and prove nothing about waking a held watch.
                # With Redis, the hub must also be subscribed: a notice published before
                # that is read from the database only at the next recheck.
                deadline = time.monotonic() + 15
                while not app.hub.waiters or (settings.REDIS_URL and not app.hub.redis_healthy):
                    assert not task.done(), task.result()
                    assert time.monotonic() < deadline, "the watch was never held"
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(closing_connection(during), app)
            return await task
        finally:
            await app.hub.stop()

    return asyncio.run(scenario())


def test_without_wait_it_answers_the_current_state_at_once(agent_token):
    publish_config(config_url=URL, pooling_interval=45)
    status, body, elapsed = run_watch("", agent_token)
    assert status == 200
    assert body == content(1, 45)


def test_a_stale_watch_is_answered_at_once(agent_token):
    publish_config(config_url=URL, pooling_interval=30)
    publish_config(config_url=URL, pooling_interval=40)
    status, body, elapsed = run_watch("version=1&wait=30", agent_token)
    assert status == 200
    assert body == content(2, 40)
    assert elapsed < 1


def test_a_held_watch_returns_soon_after_a_change(agent_token):
    publish_config(config_url=URL, pooling_interval=30)
    status, body, elapsed = run_watch(
        "version=1&wait=30",
        agent_token,
        during=lambda app: publish_config(config_url=URL, pooling_interval=60),
    )
    assert status == 200
    assert body == content(2, 60)
    assert elapsed < 2


def test_a_held_watch_returns_at_wait_when_nothing_changed(agent_token):
    publish_config(config_url=URL, pooling_interval=30)
    status, body, elapsed = run_watch("version=1&wait=1", agent_token)
    assert status == 200
    assert body == content(1, 30)
    assert 1 <= elapsed < 1.5


def test_a_change_between_the_read_and_the_hold_is_not_missed(agent_token, monkeypatch):
    publish_config(config_url=URL, pooling_interval=30)
    real = watch._touch_and_read

    async def read_then_change(agent):
        state = await real(agent)
        # The read saw version 1; the change lands before the request starts to wait.
        await asyncio.to_thread(
            closing_connection(publish_config), config_url=URL, pooling_interval=90
        )
        await asyncio.sleep(0.2)
        return state

    monkeypatch.setattr(watch, "_touch_and_read", read_then_change)
    status, body, elapsed = run_watch("version=1&wait=20", agent_token)
    assert status == 200
    assert body == content(2, 90)
    assert elapsed < 2


@pytest.mark.parametrize(
    "query", ["version=x&wait=5", "version=1&wait=61", "version=-1&wait=5", "version=1&wait=-2"]
)
def test_bad_wait_or_version_is_400(agent_token, query):
    status, body, _ = run_watch(query, agent_token)
    assert status == 400
    assert set(body) <= {"version", "wait"}


@pytest.mark.parametrize("token", [None, "garbage", "agt_unknown"])
def test_a_watch_without_an_agent_token_is_401(token):
    status, body, _ = run_watch("version=0&wait=5", token)
    assert status == 401
    assert "detail" in body


def test_revoking_an_agent_cuts_the_watch_it_holds():
    token, _ = issue_registration_token()
    agent, agent_token = register_agent(token=token)
    publish_config(config_url=URL, pooling_interval=30)
    status, body, elapsed = run_watch(
        "version=1&wait=30", agent_token, during=lambda app: revoke_agent(agent)
    )
    assert status == 401
    assert elapsed < 2


def test_without_notifications_a_change_arrives_through_the_database_recheck(
    agent_token, settings, monkeypatch
):
    # As when Redis is absent and the change was made by another process: nobody tells us.
    settings.REDIS_URL = None
    monkeypatch.setattr(notifications, "_send", lambda message: None)
    publish_config(config_url=URL, pooling_interval=30)
    status, body, elapsed = run_watch(
        "version=1&wait=30",
        agent_token,
        during=lambda app: publish_config(config_url=URL, pooling_interval=31),
    )
    assert status == 200
    assert body["version"] == 2
    assert elapsed < 3


def test_an_older_notification_never_moves_a_watch_backwards():
    hub = hub_module.Hub()

    async def scenario():
        loop = asyncio.get_running_loop()
        five = {"version": 5, "pooling_interval": 30, "config_url": URL, "uuid": "u5", "scope": 1}
        hub.advance(five)
        waiter = hub_module.Waiter(5, loop.create_future())
        hub.subscribe(waiter)
        hub.place(waiter, Agent(pk=AGENT_ID, scope_id=1, labels={}))
        hub.deliver({"type": "config", **five, "version": 4, "uuid": "u4"})
        assert not waiter.future.done()
        hub.deliver({"type": "config", **five, "version": 6, "uuid": "u6"})
        outcome, answer = waiter.future.result()
        assert outcome == "changed"
        assert {**answer, "scope": 1} == {**five, "version": 6, "uuid": "u6"}

    asyncio.run(scenario())


def test_a_notification_of_an_older_release_wakes_nobody_and_asks_for_a_database_read():
    """An older release names no scope: the hub cannot tell whose change it is, so it serves
    nothing from it and reads the database at its next recheck."""
    hub = hub_module.Hub()

    async def scenario():
        waiter = hub_module.Waiter(1, asyncio.get_running_loop().create_future())
        hub.subscribe(waiter)
        hub.place(waiter, Agent(pk=AGENT_ID, scope_id=1, labels={}))
        hub.deliver({"type": "config", "version": 2, "pooling_interval": 30})
        assert not waiter.future.done()
        assert hub.recheck_requested and 1 not in hub.latest
        # The database's state, read at the recheck, wakes it.
        full = {"version": 2, "pooling_interval": 30, "config_url": URL, "uuid": "u2", "scope": 1}
        hub.advance(full)
        assert waiter.future.result()[0] == "changed"
        assert hub.latest_of(1) == full

    asyncio.run(scenario())


def preflight_message(agent_ids: list[str], expires_at: float) -> dict:
    return {
        "type": "preflight",
        "id": "p1",
        "config_url": URL,
        "timeout_seconds": 5,
        "agent_ids": agent_ids,
        "expires_at": expires_at,
    }


def test_a_preflight_kept_for_an_agent_is_handed_once_until_it_expires(monkeypatch):
    hub = hub_module.Hub()
    now = time.time()
    monkeypatch.setattr(hub_module.time, "time", lambda: now)
    hub.offer_preflight(preflight_message([AGENT_ID, "other"], expires_at=now + 5))
    request = {"id": "p1", "config_url": URL, "timeout_seconds": 5}
    assert hub.take_preflight(AGENT_ID) == request
    assert hub.take_preflight(AGENT_ID) is None
    # The other agent's watch comes only after the request expired: it gets nothing.
    monkeypatch.setattr(hub_module.time, "time", lambda: now + 5)
    assert hub.take_preflight("other") is None


def test_an_expired_preflight_is_never_handed_out(monkeypatch):
    hub = hub_module.Hub()
    now = time.time()
    monkeypatch.setattr(hub_module.time, "time", lambda: now)
    # Arrived late (its deadline passed on the way), or kept past its deadline.
    hub.offer_preflight(preflight_message(["late"], expires_at=now - 1))
    hub.offer_preflight(preflight_message(["kept"], expires_at=now + 1))
    monkeypatch.setattr(hub_module.time, "time", lambda: now + 2)
    assert hub.take_preflight("late") is None
    assert hub.take_preflight("kept") is None


def fetch_config(token, headers=()):
    async def scenario():
        app = front.WatchEndpoint(fallback=None)
        return await call(app, token, "", path="/config/agent", headers=headers)

    return asyncio.run(scenario())


def test_config_fetch_answers_like_the_api_view_with_etag_and_304(agent_token, api):
    status, headers, body = fetch_config(agent_token)
    assert status == 404
    assert json.loads(body) == {"detail": "No configuration has been created yet."}

    publish_config(config_url=URL, pooling_interval=30)
    status, headers, body = fetch_config(agent_token)
    assert status == 200
    assert headers[b"etag"] == b'"1"'
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {agent_token}")
    assert json.loads(body) == api.get("/config/agent").json()

    status, headers, body = fetch_config(agent_token, [(b"if-none-match", b'"1"')])
    assert (status, body, headers[b"etag"]) == (304, b"", b'"1"')

    publish_config(config_url=URL + "/2", pooling_interval=30)
    status, headers, body = fetch_config(agent_token, [(b"if-none-match", b'"1"')])
    assert status == 200
    assert headers[b"etag"] == b'"2"'
    assert json.loads(body)["config_url"] == URL + "/2"


@pytest.mark.parametrize("token", [None, "garbage", "agt_unknown"])
def test_config_fetch_without_an_agent_token_is_401(token, publish):
    publish()
    status, headers, body = fetch_config(token)
    assert status == 401
    assert headers[b"www-authenticate"] == b'Bearer realm="agent"'
    assert "detail" in json.loads(body)


# Real processes -------------------------------------------------------------------------------


def hold(url: str, token: str, version: int, wait: int, results: list) -> threading.Thread:
    def run():
        started = time.monotonic()
        response = requests.get(
            f"{url}/config/version",
            params={"version": version, "wait": wait},
            headers={"Authorization": f"Bearer {token}"},
            timeout=wait + 15,
        )
        results.append((response.status_code, response.json(), time.monotonic() - started))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def admin_headers(url: str, admin_user) -> dict:
    from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

    response = requests.post(
        f"{url}/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, timeout=5
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access']}"}


@pytest.mark.bcrypt  # a controller process checks the admin's password
@pytest.mark.postgres
def test_a_change_through_one_controller_wakes_a_watch_held_by_another(agent_token, admin_user):
    redis, redis_url, _ = start_redis()
    first = second = None
    try:
        first, url_a = start_controller(redis_url=redis_url)
        second, url_b = start_controller(redis_url=redis_url)
        headers = admin_headers(url_b, admin_user)
        assert (
            requests.post(
                f"{url_b}/config/admin",
                json={"config_url": URL, "pooling_interval": 30},
                headers=headers,
                timeout=5,
            ).status_code
            == 201
        )
        results = []
        thread = hold(url_a, agent_token, 1, 30, results)
        wait_until(lambda: watches_held(url_a) == 1, message="the watch held")
        changed = requests.put(
            f"{url_b}/config/admin", json={"pooling_interval": 77}, headers=headers, timeout=5
        )
        assert changed.status_code == 200
        thread.join(20)
        assert results and results[0][0] == 200
        assert results[0][1] == content(2, 77)
        assert results[0][2] < 1.5
    finally:
        for process in (first, second, redis):
            if process is not None:
                process.stop()


@pytest.mark.bcrypt  # a controller process checks the admin's password
@pytest.mark.postgres
def test_redis_stopped_while_watches_are_held_still_delivers_the_next_change(
    agent_token, admin_user
):
    redis, redis_url, redis_port = start_redis()
    first = second = None
    try:
        first, url_a = start_controller(redis_url=redis_url)
        second, url_b = start_controller(redis_url=redis_url)
        headers = admin_headers(url_b, admin_user)
        requests.post(
            f"{url_b}/config/admin",
            json={"config_url": URL, "pooling_interval": 30},
            headers=headers,
            timeout=5,
        )
        results = []
        thread = hold(url_a, agent_token, 1, 30, results)
        wait_until(lambda: watches_held(url_a) == 1, message="the watch held")
        redis.stop()
        time.sleep(0.5)
        changed = requests.put(
            f"{url_b}/config/admin", json={"pooling_interval": 61}, headers=headers, timeout=5
        )
        assert changed.status_code == 200
        assert changed.json()["version"] == 2
        thread.join(20)
        assert results and results[0][:2] == (200, content(2, 61))
        assert results[0][2] < 5

        # Redis comes back: the subscription returns by itself and changes flow again.
        redis = restart_redis(redis_port)
        wait_until(
            lambda: "subscribed" in first.output().split("lost Redis")[-1],
            timeout=15,
            message="controller re-subscribed",
        )
        results = []
        thread = hold(url_a, agent_token, 2, 30, results)
        wait_until(lambda: watches_held(url_a) == 1, message="the watch held again")
        requests.put(
            f"{url_b}/config/admin", json={"pooling_interval": 62}, headers=headers, timeout=5
        )
        thread.join(20)
        assert results and results[0][:2] == (200, content(3, 62))
        assert results[0][2] < 1.5
        for url in (url_a, url_b):
            assert server_errors(url) == 0
    finally:
        for process in (first, second, redis):
            if process is not None:
                process.stop()


@pytest.mark.redis
def test_with_redis_subscribed_a_watch_is_answered_from_the_hub_without_a_read(agent_token):
    """Once a scope's state has been read with Redis subscribed, the next watches of that scope
    answer from the hub: no thread, no query, no cache read. Their agent's contact is still
    written, with the next batch."""
    publish_config(config_url=URL, pooling_interval=30)
    agent = Agent.objects.get()

    async def scenario():
        app = front.WatchEndpoint(fallback=None)
        await app.hub.start()
        app.heartbeats.start()
        try:
            deadline = time.monotonic() + 15
            while not app.hub.trusting:
                assert time.monotonic() < deadline, "the hub never subscribed"
                await asyncio.sleep(0.01)
            assert app.hub.trusted_latest(agent.scope_id) is None
            first = await call(app, agent_token, "version=0&wait=5")
            assert app.hub.trusted_latest(agent.scope_id)["version"] == 1
            # The cached state now says something else: only the hub can answer the next watch
            # as it should.
            await asyncio.to_thread(cache.set, state_key(agent.scope_id), {"broken": True})
            await asyncio.to_thread(
                closing_connection(lambda: Agent.objects.filter(pk=agent.pk).update(last_seen=None))
            )
            # As if the agent had not been seen lately, so that this contact is written.
            forget_last_seen([str(agent.pk)])
            reads = []
            real = watch._touch_and_read

            async def counted(agent):
                reads.append(agent.pk)
                return await real(agent)

            watch._touch_and_read = counted
            try:
                second = await call(app, agent_token, "version=0&wait=5")
            finally:
                watch._touch_and_read = real
            await app.heartbeats.flush()
            return first, second, reads
        finally:
            await app.heartbeats.stop()
            await app.hub.stop()

    first, second, reads = asyncio.run(scenario())
    assert first[:2] == second[:2] == (200, content(1, 30))
    assert reads == []
    assert Agent.objects.get().last_seen is not None


@pytest.mark.redis
def test_losing_redis_stops_the_hub_answering_without_a_read(agent_token):
    publish_config(config_url=URL, pooling_interval=30)
    agent = Agent.objects.get()

    async def scenario():
        app = front.WatchEndpoint(fallback=None)
        await app.hub.start()
        try:
            deadline = time.monotonic() + 15
            while not app.hub.trusting:
                assert time.monotonic() < deadline, "the hub never subscribed"
                await asyncio.sleep(0.01)
            await call(app, agent_token, "version=0&wait=5")
            trusted = app.hub.trusted_latest(agent.scope_id) is not None
            # What the listener does when its connection fails: a new subscription is needed,
            # and what was heard before it can no longer be trusted.
            app.hub.redis_healthy = app.hub.trusting = False
            app.hub.generation += 1
            after_loss = app.hub.trusted_latest(agent.scope_id)
            # A read made now, before a subscription, is not trusted once one comes either.
            point = app.hub.trust_point()
            app.hub.trusting = True
            app.hub.heard_in(agent.scope_id, point)
            after_untrusted_read = app.hub.trusted_latest(agent.scope_id)
            return trusted, after_loss, after_untrusted_read
        finally:
            await app.hub.stop()

    trusted, after_loss, after_untrusted_read = asyncio.run(scenario())
    assert trusted
    assert after_loss is None
    assert after_untrusted_read is None


def test_contacts_noted_between_batches_are_written_in_one_statement():
    from apps.agents.heartbeats import HeartbeatRecorder

    touched: list[list[str]] = []

    async def touch(agent_ids):
        touched.append(sorted(agent_ids))

    async def nothing(*args):
        return {}

    async def scenario():
        recorder = HeartbeatRecorder(
            write=nothing, lookup=nothing, touch=touch, flush_seconds=30, batch_size=2
        )
        for agent_id in ("a", "b", "a", "c"):
            recorder.note_seen(agent_id)
        await recorder.flush()
        return recorder.seen

    left = asyncio.run(scenario())
    assert left == set()
    assert sorted(sum(touched, [])) == ["a", "b", "c"]
    assert all(len(batch) <= 2 for batch in touched)
