"""POST /agent/heartbeat: what the agent reports lands on its Agent row."""

import pytest

from apps.agents.models import Agent
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
