"""POST /agent/heartbeat: what the agent reports lands on its Agent row."""

import pytest

from apps.agents.models import Agent, AgentHits
from apps.agents.services import revoke_agent

WORKERS = [
    {"url": "http://127.0.0.1:8082", "ok": True, "version": 3},
    {"url": "http://10.0.0.7:8082", "ok": False, "version": None},
]


def test_heartbeat_is_204_and_stores_applied_version_workers_and_last_seen(
    agent_api, registered_agent
):
    agent, _ = registered_agent
    Agent.objects.filter(pk=agent.pk).update(last_seen=None)

    response = agent_api.post(
        "/agent/heartbeat", {"applied_version": 3, "workers": WORKERS}, format="json"
    )

    assert response.status_code == 204, response.content
    agent.refresh_from_db()
    assert agent.applied_version == 3
    assert agent.workers == WORKERS
    assert agent.last_seen is not None


def test_heartbeat_accepts_an_agent_that_applied_nothing_yet(agent_api, registered_agent):
    response = agent_api.post(
        "/agent/heartbeat", {"applied_version": None, "workers": []}, format="json"
    )
    assert response.status_code == 204
    agent = Agent.objects.get(pk=registered_agent[0].pk)
    assert agent.applied_version is None
    assert agent.workers == []


def test_heartbeat_shows_in_the_agent_list(agent_api, admin_api):
    agent_api.post("/agent/heartbeat", {"applied_version": 3, "workers": WORKERS}, format="json")
    listed = admin_api.get("/agents").json()["results"][0]
    assert listed["applied_version"] == 3
    assert listed["workers"] == WORKERS


def test_a_bad_heartbeat_is_400_and_changes_nothing(agent_api, registered_agent):
    for body in (
        {"applied_version": -1, "workers": []},
        {"applied_version": 1},
        {"applied_version": 1, "workers": [{"url": "not a url", "ok": True, "version": 1}]},
        {"applied_version": "x", "workers": []},
    ):
        response = agent_api.post("/agent/heartbeat", body, format="json")
        assert response.status_code == 400, body
    agent = Agent.objects.get(pk=registered_agent[0].pk)
    assert agent.applied_version is None
    assert agent.workers == []


def test_heartbeat_without_a_valid_agent_token_is_401(api, agent_api, registered_agent):
    body = {"applied_version": 1, "workers": []}
    assert api.post("/agent/heartbeat", body, format="json").status_code == 401
    api.credentials(HTTP_AUTHORIZATION="Bearer agt_unknown")
    assert api.post("/agent/heartbeat", body, format="json").status_code == 401

    revoke_agent(registered_agent[0])
    assert agent_api.post("/agent/heartbeat", body, format="json").status_code == 401
    assert Agent.objects.get(pk=registered_agent[0].pk).applied_version is None


@pytest.mark.parametrize("version", [2**31, 10**20])
def test_a_version_past_what_the_database_stores_is_400_not_503(agent_api, version):
    response = agent_api.post(
        "/agent/heartbeat", {"applied_version": version, "workers": []}, format="json"
    )
    assert response.status_code == 400, response.content
    assert "applied_version" in response.json()


# Hits per version


def hits_rows(agent) -> dict:
    return {row.version: (row.ok, row.failed) for row in AgentHits.objects.filter(agent=agent)}


def publish_versions(publish, count: int) -> None:
    # Hits are taken only for versions that exist (tests/test_rollout_health.py).
    for n in range(count):
        publish(f"http://upstream.example/{n}")


def test_heartbeat_hits_add_up_per_agent_and_version(agent_api, registered_agent, publish):
    agent, _ = registered_agent
    publish_versions(publish, 3)
    first = [{"version": 2, "ok": 10, "failed": 1}, {"version": 3, "ok": 0, "failed": 4}]
    second = [{"version": 3, "ok": 5, "failed": 2}]

    for hits in (first, second):
        body = {"applied_version": 3, "workers": WORKERS, "hits": hits}
        assert agent_api.post("/agent/heartbeat", body, format="json").status_code == 204

    assert hits_rows(agent) == {2: (10, 1), 3: (5, 6)}


def test_heartbeat_without_hits_is_still_accepted(agent_api, registered_agent):
    body = {"applied_version": 3, "workers": WORKERS}

    assert agent_api.post("/agent/heartbeat", body, format="json").status_code == 204

    assert hits_rows(registered_agent[0]) == {}


def test_two_agents_keep_their_own_totals(agent_api, registered_agent, api, publish):
    from apps.agents.services import issue_registration_token, register_agent

    publish_versions(publish, 3)
    token, _ = issue_registration_token()
    other, other_token = register_agent(token=token, name="other")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {other_token}")
    hits = [{"version": 3, "ok": 7, "failed": 0}]
    agent_api.post(
        "/agent/heartbeat", {"applied_version": 3, "workers": [], "hits": hits}, format="json"
    )
    api.post(
        "/agent/heartbeat",
        {"applied_version": 3, "workers": [], "hits": [{"version": 3, "ok": 1, "failed": 9}]},
        format="json",
    )

    assert hits_rows(registered_agent[0]) == {3: (7, 0)}
    assert hits_rows(other) == {3: (1, 9)}


@pytest.mark.parametrize(
    "hits",
    [
        [{"version": 0, "ok": 1, "failed": 0}],
        [{"version": 3, "ok": -1, "failed": 0}],
        [{"version": 3, "ok": 1}],
        [{"version": 3, "ok": 10**10, "failed": 0}],
        [{"version": 3, "ok": "many", "failed": 0}],
        {"version": 3, "ok": 1, "failed": 0},
        [{"version": v, "ok": 1, "failed": 0} for v in range(1, 102)],
    ],
)
def test_bad_hits_are_400_and_nothing_is_stored(agent_api, registered_agent, hits):
    body = {"applied_version": 3, "workers": WORKERS, "hits": hits}

    response = agent_api.post("/agent/heartbeat", body, format="json")

    assert response.status_code == 400, response.content
    assert "hits" in response.json()
    assert hits_rows(registered_agent[0]) == {}
    assert Agent.objects.get(pk=registered_agent[0].pk).applied_version is None


def test_agent_list_shows_the_hits_of_the_current_version(agent_api, admin_api, publish):
    publish("http://upstream.example/a")
    publish("http://upstream.example/b")  # version 2 is current
    hits = [{"version": 1, "ok": 50, "failed": 0}, {"version": 2, "ok": 3, "failed": 9}]
    agent_api.post(
        "/agent/heartbeat", {"applied_version": 2, "workers": WORKERS, "hits": hits}, format="json"
    )

    listed = admin_api.get("/agents").json()["results"][0]

    assert listed["hits"] == {"version": 2, "ok": 3, "failed": 9}


def test_agent_list_shows_null_hits_before_any(agent_api, admin_api, publish):
    publish()

    assert admin_api.get("/agents").json()["results"][0]["hits"] is None


def test_admin_agent_list_shows_the_hits(agent_api, publish, client, admin_user):
    publish()
    hits = [{"version": 1, "ok": 30, "failed": 10}]
    agent_api.post(
        "/agent/heartbeat", {"applied_version": 1, "workers": WORKERS, "hits": hits}, format="json"
    )
    client.force_login(admin_user)

    page = client.get("/admin/agents/agent/").content.decode()

    assert "30 ok" in page
    assert "10 failed" in page
    assert "25%" in page


# Hits through the batched path of the ASGI front (tests/test_heartbeat_batches.py has the
# recorder keeping them across windows)


def HIT(version, ok, failed):  # noqa: N802 - reads as a constructor
    return {"version": version, "ok": ok, "failed": failed}


def test_record_heartbeats_adds_the_hits_of_a_batch(registered_agent, publish):
    from django.utils import timezone

    from apps.agents.services import record_heartbeats

    publish_versions(publish, 2)
    agent = registered_agent[0]
    now = timezone.now()
    record_heartbeats({str(agent.pk): (now, 2, [], [HIT(2, 5, 1)], None)})
    record_heartbeats({str(agent.pk): (now, 2, [], [HIT(2, 1, 1), HIT(1, 9, 0)], None)})

    assert hits_rows(agent) == {1: (9, 0), 2: (6, 2)}
    assert Agent.objects.get(pk=agent.pk).applied_version == 2
