"""History, rollback and the fleet view through the API, as an operator uses them."""

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from apps.agents import auth as agent_auth
from apps.agents.models import Agent
from apps.agents.services import (
    STATUSES,
    agent_status,
    count_by_status,
    filter_by_status,
    issue_registration_token,
    register_agent,
)
from apps.configs import notifications
from apps.configs.models import ConfigVersion
from apps.configs.services import state_key
from apps.scopes.services import default_scope_id
from tests.conftest import ADMIN_EMAIL
from tests.support.clients import bearer

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/task"


def change(admin_api, **fields):
    response = admin_api.put("/config/admin", fields, format="json")
    assert response.status_code == 200, response.content
    return response.json()


# History ----------------------------------------------------------------------------------


def test_history_is_empty_before_any_config(admin_api):
    response = admin_api.get("/config/admin/history")
    assert response.status_code == 200
    assert response.json() == {"count": 0, "next": None, "previous": None, "results": []}


def test_history_lists_versions_newest_first_with_author_time_and_changed_fields(admin_api):
    admin_api.post("/config/admin", {"config_url": URL, "pooling_interval": 30}, format="json")
    change(admin_api, pooling_interval=60)
    change(admin_api, config_url=URL + "/b")
    change(admin_api, config_url=URL, pooling_interval=90)
    rows = admin_api.get("/config/admin/history").json()["results"]
    assert [row["version"] for row in rows] == [4, 3, 2, 1]
    assert [row["changed"] for row in rows] == [
        ["config_url", "pooling_interval"],
        ["config_url"],
        ["pooling_interval"],
        ["config_url", "pooling_interval"],
    ]
    assert {row["created_by"] for row in rows} == {ADMIN_EMAIL}
    assert all(row["created_at"] for row in rows)
    assert set(rows[0]) == {
        "uuid",
        "version",
        "config_url",
        "pooling_interval",
        "created_at",
        "created_by",
        "changed",
        "rolled_back_from",
    }


def test_history_pages_keep_changed_fields_right_across_the_page_boundary(admin_api):
    admin_api.post("/config/admin", {"config_url": URL, "pooling_interval": 30}, format="json")
    for interval in range(31, 31 + 54):
        change(admin_api, pooling_interval=interval)
    first = admin_api.get("/config/admin/history").json()
    assert first["count"] == 55
    assert len(first["results"]) == 50
    assert first["results"][-1]["version"] == 6
    assert first["results"][-1]["changed"] == ["pooling_interval"]
    second = admin_api.get(first["next"]).json()
    assert [row["version"] for row in second["results"]] == [5, 4, 3, 2, 1]
    assert second["results"][-1]["changed"] == ["config_url", "pooling_interval"]
    assert admin_api.get("/config/admin/history?page=9").status_code == 404


def test_history_shows_rollbacks_and_versions_made_by_commands(admin_api, publish):
    publish(URL, 30)  # as from a shell or command: no author
    change(admin_api, pooling_interval=45)
    admin_api.post("/config/admin/rollback", {"version": 1}, format="json")
    rows = admin_api.get("/config/admin/history").json()["results"]
    assert rows[0]["rolled_back_from"] == 1
    assert rows[0]["changed"] == ["pooling_interval"]
    assert rows[-1]["created_by"] is None
    assert rows[1]["rolled_back_from"] is None


def test_history_needs_an_admin(api, agent_api):
    assert api.get("/config/admin/history").status_code == 401
    assert agent_api.get("/config/admin/history").status_code == 401


# Rollback ---------------------------------------------------------------------------------


def test_rollback_makes_a_new_version_with_the_old_content(admin_api):
    admin_api.post("/config/admin", {"config_url": URL, "pooling_interval": 30}, format="json")
    change(admin_api, config_url=URL + "/new", pooling_interval=120)
    response = admin_api.post("/config/admin/rollback", {"version": 1}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["version"] == 3
    assert (body["config_url"], body["pooling_interval"]) == (URL, 30)
    assert body["created_by"] == ADMIN_EMAIL
    assert ConfigVersion.objects.get(version=3).rolled_back_from == 1
    # History is never rewritten.
    assert ConfigVersion.objects.get(version=2).pooling_interval == 120
    assert admin_api.get("/config/admin").json()["version"] == 3


def test_rollback_to_the_current_content_makes_no_version(admin_api):
    admin_api.post("/config/admin", {"config_url": URL, "pooling_interval": 30}, format="json")
    change(admin_api, pooling_interval=60)
    change(admin_api, pooling_interval=30)
    response = admin_api.post("/config/admin/rollback", {"version": 1}, format="json")
    assert response.status_code == 200
    assert response.json()["version"] == 3
    assert (
        admin_api.post("/config/admin/rollback", {"version": 3}, format="json").status_code == 200
    )
    assert ConfigVersion.objects.count() == 3


def test_rollback_to_an_unknown_version_is_404(admin_api):
    assert (
        admin_api.post("/config/admin/rollback", {"version": 1}, format="json").status_code == 404
    )
    admin_api.post("/config/admin", {"config_url": URL, "pooling_interval": 30}, format="json")
    response = admin_api.post("/config/admin/rollback", {"version": 7}, format="json")
    assert response.status_code == 404
    assert "detail" in response.json()
    assert ConfigVersion.objects.count() == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"version": 0},
        {"version": -1},
        {"version": "1"},
        {"version": 1.0},
        {"version": True},
        {"version": None},
        {"version": [1]},
        {"other": 1},
        [1],
        "1",
    ],
)
def test_rollback_with_a_bad_body_is_400_and_changes_nothing(admin_api, body):
    admin_api.post("/config/admin", {"config_url": URL, "pooling_interval": 30}, format="json")
    change(admin_api, pooling_interval=60)
    response = admin_api.post("/config/admin/rollback", body, format="json")
    assert response.status_code == 400
    assert ConfigVersion.objects.count() == 2


def test_rollback_with_a_non_json_body_is_400(admin_api):
    response = admin_api.post("/config/admin/rollback", "{broken", content_type="application/json")
    assert response.status_code == 400


def test_rollback_needs_an_admin(api, agent_api, publish):
    publish(URL, 30)
    assert api.post("/config/admin/rollback", {"version": 1}, format="json").status_code == 401
    assert (
        agent_api.post("/config/admin/rollback", {"version": 1}, format="json").status_code == 401
    )


def test_a_rollback_is_announced_to_agents_like_any_change(
    admin_api, agent_api, django_capture_on_commit_callbacks, monkeypatch
):
    heard = []
    monkeypatch.setattr(notifications, "set_local_listener", lambda listener: None)
    monkeypatch.setattr(notifications, "_local_listener", heard.append)
    monkeypatch.setattr(notifications.settings, "REDIS_URL", None)
    with django_capture_on_commit_callbacks(execute=True):
        admin_api.post("/config/admin", {"config_url": URL, "pooling_interval": 30}, format="json")
        change(admin_api, pooling_interval=60)
        admin_api.post("/config/admin/rollback", {"version": 1}, format="json")
    third = {
        "version": 3,
        "pooling_interval": 30,
        "config_url": URL,
        "uuid": str(ConfigVersion.objects.get(version=3).uuid),
    }
    served = {**third, "revision": 0, "rollout": None, "scope": default_scope_id()}
    assert heard[-1] == {"type": "config", **served}
    assert cache.get(state_key(default_scope_id())) == served
    assert agent_api.get("/config/version").json() == third


# Fleet status -----------------------------------------------------------------------------


def make_agent(name: str, **fields) -> Agent:
    token, _ = issue_registration_token()
    agent, _ = register_agent(token=token, name=name, hostname=f"{name}.local")
    Agent.objects.filter(pk=agent.pk).update(**fields)
    agent.refresh_from_db()
    return agent


@pytest.fixture
def fleet(publish):
    """One agent in each status, with pooling_interval 30: stale after 90 s of silence."""
    publish(URL, 30)
    publish(URL, 40)  # version 2, interval 40: stale after 120 s
    now = timezone.now()
    return {
        "in_sync": make_agent("synced", applied_version=2, last_seen=now - timedelta(seconds=5)),
        "behind": make_agent("lagging", applied_version=1, last_seen=now - timedelta(seconds=5)),
        "never_reported": make_agent("new", applied_version=None, last_seen=now),
        "stale": make_agent("silent", applied_version=2, last_seen=now - timedelta(seconds=121)),
        "never_seen": make_agent("ghost", applied_version=None, last_seen=None),
        "revoked": make_agent("gone", applied_version=2, last_seen=now, revoked_at=now),
    }


def test_agents_list_has_every_field_and_worker_state(admin_api, fleet):
    workers = [
        {"url": "http://127.0.0.1:8082", "ok": True, "version": 2},
        {"url": "http://127.0.0.1:8083", "ok": False, "version": None},
    ]
    Agent.objects.filter(pk=fleet["in_sync"].pk).update(workers=workers)
    rows = {row["name"]: row for row in admin_api.get("/agents").json()["results"]}
    assert set(rows) == {"synced", "lagging", "new", "silent", "ghost", "gone"}
    synced = rows["synced"]
    assert synced["hostname"] == "synced.local"
    assert synced["created_at"] and synced["last_seen"]
    assert synced["applied_version"] == 2
    assert synced["workers"] == workers
    assert synced["is_active"] is True and synced["revoked_at"] is None
    assert {name: row["status"] for name, row in rows.items()} == {
        "synced": "in_sync",
        "lagging": "behind",
        "new": "behind",
        "silent": "stale",
        "ghost": "stale",
        "gone": "revoked",
    }


@pytest.mark.parametrize(
    ("status", "names"),
    [
        ("in_sync", ["synced"]),
        ("behind", ["lagging", "new"]),
        ("stale", ["silent", "ghost"]),
        ("revoked", ["gone"]),
    ],
)
def test_agents_filter_by_status(admin_api, fleet, status, names):
    response = admin_api.get("/agents", {"status": status})
    assert response.status_code == 200
    body = response.json()
    assert sorted(row["name"] for row in body["results"]) == sorted(names)
    assert body["count"] == len(names)
    assert {row["status"] for row in body["results"]} == {status}


@pytest.mark.parametrize("status", ["bogus", "IN_SYNC", "in sync"])
def test_agents_unknown_status_filter_is_400(admin_api, status):
    response = admin_api.get("/agents", {"status": status})
    assert response.status_code == 400
    assert "status" in response.json()


def test_agents_list_needs_an_admin(api, agent_api):
    assert api.get("/agents").status_code == 401
    assert agent_api.get("/agents").status_code == 401


def test_database_status_filter_agrees_with_the_per_agent_status_at_every_moment(fleet):
    """The clock moves; the filter, the counts and agent_status must say the same thing."""
    agents = list(Agent.objects.all())
    base = timezone.now()
    for state in [
        {"version": 0, "pooling_interval": None},
        {"version": 2, "pooling_interval": 40},
        {"version": 2, "pooling_interval": 30},
        {"version": 5, "pooling_interval": 86400},
    ]:
        for offset in [0, 29, 31, 89, 91, 119, 121, 3600]:
            now = base + timedelta(seconds=offset)
            expected = {status: set() for status in STATUSES}
            for agent in agents:
                expected[agent_status(agent, state, now)].add(agent.pk)
            for status in STATUSES:
                found = set(
                    filter_by_status(Agent.objects.all(), status, state, now).values_list(
                        "pk", flat=True
                    )
                )
                assert found == expected[status], (state, offset, status)
            counts = count_by_status(state, now)
            assert counts == {status: len(expected[status]) for status in STATUSES}


def test_stale_is_three_polling_intervals_without_contact(registered_agent):
    agent, _ = registered_agent
    now = timezone.now()
    state = {"version": 1, "pooling_interval": 60}
    agent.applied_version = 1
    agent.last_seen = now - timedelta(seconds=180)
    assert agent_status(agent, state, now) == "in_sync"
    agent.last_seen = now - timedelta(seconds=180, microseconds=1)
    assert agent_status(agent, state, now) == "stale"
    # Before any config, agents check every 10 s.
    agent.last_seen = now - timedelta(seconds=31)
    assert agent_status(agent, {"version": 0, "pooling_interval": None}, now) == "stale"


def test_a_heartbeat_moves_an_agent_from_behind_to_in_sync(admin_api, publish):
    publish(URL, 30)
    token, _ = issue_registration_token()
    agent, agent_token = register_agent(token=token, name="edge")
    assert admin_api.get("/agents").json()["results"][0]["status"] == "behind"
    client = bearer(agent_token)
    response = client.post(
        "/agent/heartbeat",
        {
            "applied_version": 1,
            "workers": [{"url": "http://127.0.0.1:8082", "ok": True, "version": 1}],
        },
        format="json",
    )
    assert response.status_code == 204
    row = admin_api.get("/agents").json()["results"][0]
    assert row["status"] == "in_sync"
    assert row["workers"] == [{"url": "http://127.0.0.1:8082", "ok": True, "version": 1}]


# Revocation -------------------------------------------------------------------------------


def test_revoke_answers_the_agent_and_is_idempotent(admin_api, registered_agent):
    agent, _ = registered_agent
    first = admin_api.post(f"/agents/{agent.pk}/revoke")
    assert first.status_code == 200
    revoked_at = first.json()["revoked_at"]
    assert revoked_at
    again = admin_api.post(f"/agents/{agent.pk}/revoke")
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked_at


@pytest.mark.parametrize("agent_id", ["00000000-0000-0000-0000-000000000000"])
def test_revoke_of_an_unknown_agent_is_404_and_needs_an_admin(api, admin_api, agent_id):
    assert admin_api.post(f"/agents/{agent_id}/revoke").status_code == 404
    assert admin_api.post("/agents/not-a-uuid/revoke").status_code == 404
    assert api.post(f"/agents/{agent_id}/revoke").status_code == 401


def test_a_revocation_made_by_another_process_is_honoured_within_a_second(
    registered_agent, agent_api, monkeypatch
):
    """Each process trusts its memory of a token for AGENT_AUTH_CACHE_SECONDS (1 s), so a
    revocation written by another controller process is refused here within that time."""
    agent, _ = registered_agent
    clock = [1000.0]
    monkeypatch.setattr(agent_auth, "clock", lambda: clock[0])
    assert agent_api.get("/config/version").status_code == 200
    # Another process revokes: the row changes, but this process's memory is not told.
    Agent.objects.filter(pk=agent.pk).update(revoked_at=timezone.now())
    clock[0] += 0.5
    assert agent_api.get("/config/version").status_code == 200
    clock[0] += 0.6
    assert agent_api.get("/config/version").status_code == 401
    assert agent_api.get("/config/agent").status_code == 401
    body = {"applied_version": 1, "workers": []}
    assert agent_api.post("/agent/heartbeat", body, format="json").status_code == 401


def test_a_revocation_in_this_process_is_honoured_at_once(
    admin_api, registered_agent, agent_api, monkeypatch
):
    agent, _ = registered_agent
    monkeypatch.setattr(agent_auth, "clock", lambda: 1000.0)
    assert agent_api.get("/config/version").status_code == 200
    assert admin_api.post(f"/agents/{agent.pk}/revoke").status_code == 200
    assert agent_api.get("/config/version").status_code == 401
