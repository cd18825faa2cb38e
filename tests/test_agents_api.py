import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from apps.agents.models import Agent, RegistrationToken
from apps.agents.services import agent_status, issue_registration_token, revoke_agent
from controller_site.tokens import hash_token
from tests.support.clients import ServedClient, bearer

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/task"


# The agents' reads as the DRF views answer them (an APIClient) and as production serves them
# (the ASGI application, which answers both in front of Django).
READERS = [
    pytest.param("drf", id="drf-view"),
    pytest.param("served", id="served", marks=pytest.mark.django_db(transaction=True)),
]


@pytest.fixture
def reader(request, registered_agent):
    if request.param == "served":
        return ServedClient(registered_agent[1])
    return bearer(registered_agent[1])


def anonymous(kind: str, token: str | None = None):
    if kind == "served":
        return ServedClient(token)
    return bearer(token) if token else APIClient()


def test_admin_issues_a_one_time_token_stored_only_as_a_hash(admin_api):
    before = timezone.now()
    response = admin_api.get("/agent/admin")
    assert response.status_code == 200
    body = response.json()
    token = body["registration_token"]
    record = RegistrationToken.objects.get()
    assert record.token_hash == hash_token(token)
    assert token not in record.token_hash
    expires = record.expires_at
    assert timedelta(minutes=59) < expires - before <= timedelta(hours=1, seconds=5)


def test_token_ttl_is_honoured_and_bounded(admin_api):
    response = admin_api.get("/agent/admin?ttl=600")
    assert response.status_code == 200
    record = RegistrationToken.objects.get()
    assert record.expires_at - record.created_at < timedelta(seconds=605)
    for bad in ["0", "-5", "abc", str(7 * 24 * 3600 + 1)]:
        assert admin_api.get(f"/agent/admin?ttl={bad}").status_code == 400
    assert RegistrationToken.objects.count() == 1


def test_issuing_a_token_needs_an_admin(api, agent_api):
    assert api.get("/agent/admin").status_code == 401
    assert agent_api.get("/agent/admin").status_code == 401


def test_register_returns_agent_credentials_and_urls(admin_api, publish):
    token = admin_api.get("/agent/admin").json()["registration_token"]
    publish(URL, 45)
    response = bearer(token).post(
        "/agent/register", {"name": "edge-1", "hostname": "h1"}, format="json"
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {
        "agent_id",
        "agent_token",
        "version_url",
        "poll_url",
        "pooling_interval",
        "labels",
    }
    assert body["version_url"] == "http://testserver/config/version"
    assert body["poll_url"] == "http://testserver/config/agent"
    assert body["pooling_interval"] == 45
    agent = Agent.objects.get(pk=body["agent_id"])
    assert agent.name == "edge-1" and agent.hostname == "h1"
    assert agent.token_hash == hash_token(body["agent_token"])
    assert RegistrationToken.objects.get().used_by == agent


def test_register_without_body_works_and_interval_is_null_before_any_config():
    token, _ = issue_registration_token()
    response = bearer(token).post("/agent/register")
    assert response.status_code == 201
    assert response.json()["pooling_interval"] is None


def test_a_registration_token_works_once():
    token, _ = issue_registration_token()
    assert bearer(token).post("/agent/register").status_code == 201
    again = bearer(token).post("/agent/register")
    assert again.status_code == 401
    assert "detail" in again.json()
    assert Agent.objects.count() == 1


def test_expired_unknown_and_missing_registration_tokens_are_401():
    token, record = issue_registration_token()
    RegistrationToken.objects.filter(pk=record.pk).update(expires_at=timezone.now())
    assert bearer(token).post("/agent/register").status_code == 401
    assert bearer("reg_unknown").post("/agent/register").status_code == 401
    assert APIClient().post("/agent/register").status_code == 401
    assert Agent.objects.count() == 0


def test_register_with_bad_body_is_400_and_does_not_use_the_token():
    token, _ = issue_registration_token()
    response = bearer(token).post("/agent/register", {"name": "x" * 201}, format="json")
    assert response.status_code == 400
    assert RegistrationToken.objects.get().used_at is None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_registrations_on_many_tokens_exactly_one_wins_each():
    # One pair of contenders catches a claim that is not atomic only when their reads happen to
    # interleave; many tokens contended at once, over several rounds, make that near certain.
    tokens_per_round, contenders, rounds = 6, 4, 5
    statuses: dict[str, list[int]] = {}
    for _ in range(rounds):
        tokens = [issue_registration_token()[0] for _ in range(tokens_per_round)]
        barrier = threading.Barrier(tokens_per_round * contenders)

        def register(token: str, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                status = bearer(token).post("/agent/register").status_code
                statuses.setdefault(token, []).append(status)
            finally:
                connection.close()

        threads = [
            threading.Thread(target=register, args=(token,))
            for token in tokens
            for _ in range(contenders)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(statuses) == tokens_per_round * rounds
    for token, seen in statuses.items():
        assert sorted(seen) == [201] + [401] * (contenders - 1), (token, seen)
    assert Agent.objects.count() == tokens_per_round * rounds
    assert RegistrationToken.objects.filter(used_by__isnull=False).count() == len(statuses)


@pytest.mark.parametrize("reader", READERS, indirect=True)
def test_version_is_zero_before_any_config(reader):
    response = reader.get("/config/version")
    assert response.status_code == 200
    assert response.json() == {
        "version": 0,
        "pooling_interval": None,
        "config_url": None,
        "uuid": None,
    }


@pytest.mark.parametrize("reader", READERS, indirect=True)
def test_version_follows_changes_and_carries_the_content(reader, publish):
    first = publish(URL, 30)
    assert reader.get("/config/version").json() == {
        "version": 1,
        "pooling_interval": 30,
        "config_url": URL,
        "uuid": str(first.uuid),
    }
    second = publish(URL + "?b", 90)
    assert reader.get("/config/version").json() == {
        "version": 2,
        "pooling_interval": 90,
        "config_url": URL + "?b",
        "uuid": str(second.uuid),
    }


@pytest.mark.parametrize("query", ["version=abc", "version=-1", "wait=61", "wait=x", "wait=-1"])
@pytest.mark.parametrize("reader", READERS, indirect=True)
def test_bad_version_query_is_400(reader, query):
    response = reader.get(f"/config/version?{query}")
    assert response.status_code == 400


@pytest.mark.parametrize("kind", ["drf", pytest.param("served", marks=READERS[1].marks)])
@pytest.mark.parametrize("path", ["/config/version", "/config/agent"])
def test_agent_endpoints_refuse_everything_but_an_agent_token(admin_api, path, publish, kind):
    publish(URL, 30)
    token, _ = issue_registration_token()
    admin = admin_api._credentials["HTTP_AUTHORIZATION"].removeprefix("Bearer ")
    assert anonymous(kind).get(path).status_code == 401
    assert anonymous(kind, admin).get(path).status_code == 401
    assert anonymous(kind, token).get(path).status_code == 401
    assert anonymous(kind, "garbage").get(path).status_code == 401
    assert anonymous(kind, "agt_" + "x" * 40).get(path).status_code == 401
    response = anonymous(kind).get(path, HTTP_AUTHORIZATION="Basic Zm9vOmJhcg==")
    assert response.status_code == 401


@pytest.mark.parametrize("reader", READERS, indirect=True)
def test_config_agent_is_404_before_any_config(reader):
    assert reader.get("/config/agent").status_code == 404


@pytest.mark.parametrize("reader", READERS, indirect=True)
def test_config_agent_sends_etag_and_answers_304_when_unchanged(reader, publish):
    config = publish(URL, 30)
    response = reader.get("/config/agent")
    assert response.status_code == 200
    assert response["ETag"] == '"1"'
    assert response.json() == {
        "uuid": str(config.uuid),
        "version": 1,
        "config_url": URL,
        "pooling_interval": 30,
        "created_at": response.json()["created_at"],
    }
    unchanged = reader.get("/config/agent", HTTP_IF_NONE_MATCH='"1"')
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    publish(URL + "/2", 30)
    changed = reader.get("/config/agent", HTTP_IF_NONE_MATCH='"1"')
    assert changed.status_code == 200
    assert changed["ETag"] == '"2"'
    assert changed.json()["config_url"] == URL + "/2"


@pytest.mark.redis
def test_version_check_needs_no_database_query_when_warm(agent_api, publish):
    publish(URL, 30)
    agent_api.get("/config/version")  # warms the token memory and writes last_seen
    with CaptureQueriesContext(connection) as queries:
        response = agent_api.get("/config/version")
    assert response.status_code == 200
    assert response.json()["version"] == 1
    assert len(queries) == 0


def test_version_is_answered_from_the_database_when_the_cache_is_unreachable(
    agent_api, settings, publish
):
    publish(URL, 30)
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"IGNORE_EXCEPTIONS": True, "SOCKET_CONNECT_TIMEOUT": 0.2},
        }
    }
    # The settings fixture resets the cache connections, so this request meets a dead Redis.
    response = agent_api.get("/config/version")
    assert response.status_code == 200
    assert response.json()["version"] == 1
    assert response.json()["config_url"] == URL
    publish(URL, 60)
    assert agent_api.get("/config/version").json()["version"] == 2


def test_agent_calls_record_last_seen(registered_agent, agent_api):
    agent, _ = registered_agent
    Agent.objects.filter(pk=agent.pk).update(last_seen=None)
    agent_api.get("/config/version")
    assert Agent.objects.get(pk=agent.pk).last_seen is not None


def test_heartbeat_stores_what_the_agent_applied(registered_agent, agent_api):
    agent, _ = registered_agent
    body = {
        "applied_version": 3,
        "workers": [{"url": "http://127.0.0.1:8082", "ok": True, "version": 3}],
    }
    response = agent_api.post("/agent/heartbeat", body, format="json")
    assert response.status_code == 204
    agent.refresh_from_db()
    assert agent.applied_version == 3
    assert agent.workers == body["workers"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"applied_version": "x", "workers": []},
        {"applied_version": 1, "workers": [{"url": "not a url", "ok": True, "version": 1}]},
        {"applied_version": 1, "workers": "nope"},
    ],
)
def test_bad_heartbeat_is_400_and_stores_nothing(registered_agent, agent_api, body):
    agent, _ = registered_agent
    assert agent_api.post("/agent/heartbeat", body, format="json").status_code == 400
    agent.refresh_from_db()
    assert agent.applied_version is None


def test_heartbeat_needs_an_agent_token(api, admin_api):
    body = {"applied_version": 1, "workers": []}
    assert api.post("/agent/heartbeat", body, format="json").status_code == 401
    assert admin_api.post("/agent/heartbeat", body, format="json").status_code == 401


def test_agents_list_shows_each_agent_with_a_derived_status(admin_api, registered_agent, publish):
    agent, _ = registered_agent
    publish(URL, 30)
    Agent.objects.filter(pk=agent.pk).update(applied_version=1, last_seen=timezone.now())
    response = admin_api.get("/agents")
    assert response.status_code == 200
    (row,) = response.json()["results"]
    assert row["id"] == str(agent.pk)
    assert row["status"] == "in_sync"
    assert row["is_active"] is True
    assert admin_api.get("/agents?status=behind").json()["results"] == []
    assert admin_api.get("/agents?status=bogus").status_code == 400
    assert APIClient().get("/agents").status_code == 401


def test_derived_status_with_the_clock_under_control(registered_agent):
    agent, _ = registered_agent
    now = timezone.now()
    state = {"version": 2, "pooling_interval": 30}
    agent.applied_version, agent.last_seen = 2, now - timedelta(seconds=89)
    assert agent_status(agent, state, now) == "in_sync"
    agent.applied_version = 1
    assert agent_status(agent, state, now) == "behind"
    agent.last_seen = now - timedelta(seconds=91)
    assert agent_status(agent, state, now) == "stale"
    agent.revoked_at = now
    assert agent_status(agent, state, now) == "revoked"


def test_revoked_agent_is_refused_everywhere(admin_api, registered_agent, agent_api, publish):
    agent, _ = registered_agent
    publish(URL, 30)
    assert agent_api.get("/config/version").status_code == 200
    response = admin_api.post(f"/agents/{agent.pk}/revoke")
    assert response.status_code == 200
    assert response.json()["is_active"] is False
    assert response.json()["status"] == "revoked"
    assert agent_api.get("/config/version").status_code == 401
    assert agent_api.get("/config/agent").status_code == 401
    body = {"applied_version": 1, "workers": []}
    assert agent_api.post("/agent/heartbeat", body, format="json").status_code == 401


def test_revoke_unknown_agent_is_404(admin_api):
    response = admin_api.post("/agents/00000000-0000-0000-0000-000000000000/revoke")
    assert response.status_code == 404


def test_revoke_service_is_idempotent(registered_agent):
    agent, _ = registered_agent
    assert revoke_agent(agent) is True
    assert revoke_agent(agent) is False
