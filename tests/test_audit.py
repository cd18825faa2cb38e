"""The audit log: what is recorded, by whom and from where, and that nobody can change it."""

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.management import call_command
from rest_framework.test import APIClient

from apps.agents.models import Agent
from apps.agents.services import issue_registration_token, register_agent, revoke_agent
from apps.audit.models import AuditEntry, AuditLogIsAppendOnly
from apps.audit.services import record_event
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.support.clients import bearer

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/task"
GOOD = {"config_url": URL, "pooling_interval": 30}


def entries(action: str) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action=action).order_by("id"))


def login(client, password=ADMIN_PASSWORD, **extra):
    return client.post(
        "/login", {"email": ADMIN_EMAIL, "password": password}, format="json", **extra
    )


def test_api_login_success_is_recorded_with_actor_and_address(admin_user):
    assert login(APIClient(), REMOTE_ADDR="192.0.2.7").status_code == 200
    (entry,) = entries(AuditEntry.LOGIN_SUCCEEDED)
    assert entry.actor == ADMIN_EMAIL
    assert entry.source_ip == "192.0.2.7"
    assert entry.detail == {"via": "api"}
    assert entry.at is not None


def test_failed_login_is_recorded_without_the_password(admin_user):
    secret = "Wrong-Secret-Guess-42"
    assert login(APIClient(), password=secret).status_code == 401
    unknown = APIClient().post(
        "/login", {"email": "Nobody@Example.com", "password": secret}, format="json"
    )
    assert unknown.status_code == 401
    failures = entries(AuditEntry.LOGIN_FAILED)
    assert [entry.actor for entry in failures] == [ADMIN_EMAIL, "nobody@example.com"]
    assert all(entry.source_ip == "127.0.0.1" for entry in failures)
    dumped = json.dumps(list(AuditEntry.objects.values()), default=str)
    assert secret not in dumped
    assert entries(AuditEntry.LOGIN_SUCCEEDED) == []


def test_the_client_address_is_remote_addr_and_never_the_forwarded_header(admin_user):
    # The server puts a trusted proxy's X-Forwarded-For into REMOTE_ADDR; the application never
    # reads the header itself, so a client that reaches it around the proxy cannot choose it.
    forged = {"HTTP_X_FORWARDED_FOR": "198.51.100.1, 203.0.113.5", "REMOTE_ADDR": "10.0.0.1"}
    login(APIClient(), **forged)
    assert entries(AuditEntry.LOGIN_SUCCEEDED)[-1].source_ip == "10.0.0.1"
    login(APIClient(), REMOTE_ADDR="not-an-address")
    assert entries(AuditEntry.LOGIN_SUCCEEDED)[-1].source_ip is None


def test_num_proxies_is_refused_at_start():
    # NUM_PROXIES believed X-Forwarded-For from any peer: a controller configured with it
    # stops, naming the setting that replaces it.
    env = {**os.environ, "NUM_PROXIES": "1", "SECRET_KEY": "x" * 50}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "NUM_PROXIES" in result.stderr and "FORWARDED_ALLOW_IPS" in result.stderr


def test_admin_session_login_and_failure_are_recorded(admin_user, client):
    client.post("/admin/login/", {"username": ADMIN_EMAIL, "password": "wrong-one"})
    response = client.post(
        "/admin/login/?next=/admin/", {"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 302
    (failure,) = entries(AuditEntry.LOGIN_FAILED)
    assert failure.actor == ADMIN_EMAIL and failure.detail == {"via": "admin"}
    (success,) = entries(AuditEntry.LOGIN_SUCCEEDED)
    assert success.actor == ADMIN_EMAIL and success.detail == {"via": "admin"}
    assert "wrong-one" not in json.dumps(list(AuditEntry.objects.values()), default=str)


def test_token_refresh_is_recorded(admin_user):
    client = APIClient()
    refresh = login(client).json()["refresh"]
    assert client.post("/login/refresh", {"refresh": refresh}, format="json").status_code == 200
    (entry,) = entries(AuditEntry.TOKEN_REFRESHED)
    assert entry.actor == ADMIN_EMAIL
    assert entry.source_ip == "127.0.0.1"
    assert refresh not in json.dumps(entry.detail)
    # A refused refresh changes nothing and records no refresh.
    client.post("/login/refresh", {"refresh": refresh}, format="json")
    assert len(entries(AuditEntry.TOKEN_REFRESHED)) == 1


def test_config_create_update_and_rollback_are_recorded_with_before_and_after(admin_api):
    admin_api.post("/config/admin", GOOD, format="json")
    admin_api.put("/config/admin", {"pooling_interval": 60}, format="json")
    admin_api.post("/config/admin/rollback", {"version": 1}, format="json")
    (created,) = entries(AuditEntry.CONFIG_CREATED)
    assert created.actor == ADMIN_EMAIL and created.source_ip == "127.0.0.1"
    assert created.target == "config v1"
    assert created.detail == {
        "before": None,
        "after": {"version": 1, "config_url": URL, "pooling_interval": 30},
    }
    (updated,) = entries(AuditEntry.CONFIG_UPDATED)
    assert updated.detail == {
        "before": {"version": 1, "config_url": URL, "pooling_interval": 30},
        "after": {"version": 2, "config_url": URL, "pooling_interval": 60},
    }
    (rolled_back,) = entries(AuditEntry.CONFIG_ROLLED_BACK)
    assert rolled_back.target == "config v3"
    assert rolled_back.detail["before"]["pooling_interval"] == 60
    assert rolled_back.detail["after"] == {"version": 3, "config_url": URL, "pooling_interval": 30}


def test_changes_that_change_nothing_or_fail_are_not_recorded(admin_api):
    admin_api.post("/config/admin", GOOD, format="json")
    admin_api.post("/config/admin", GOOD, format="json")
    admin_api.put("/config/admin", {"pooling_interval": 30}, format="json")
    admin_api.put("/config/admin", {"pooling_interval": 5}, format="json")
    admin_api.post("/config/admin/rollback", {"version": 1}, format="json")
    admin_api.post("/config/admin/rollback", {"version": 9}, format="json")
    config_actions = [
        a for a in AuditEntry.objects.values_list("action", flat=True) if "config" in a
    ]
    assert config_actions == [AuditEntry.CONFIG_CREATED]


def test_registration_token_issue_is_recorded_without_the_token(admin_api):
    body = admin_api.get("/agent/admin?ttl=600").json()
    (entry,) = entries(AuditEntry.REGISTRATION_TOKEN_ISSUED)
    assert entry.actor == ADMIN_EMAIL and entry.source_ip == "127.0.0.1"
    assert entry.detail["ttl"] == 600
    dumped = json.dumps(list(AuditEntry.objects.values()), default=str)
    assert body["registration_token"] not in dumped
    from controller_site.tokens import hash_token

    assert hash_token(body["registration_token"]) not in dumped


def test_agent_registration_and_revocation_are_recorded(admin_api):
    token = admin_api.get("/agent/admin").json()["registration_token"]
    client = bearer(token)
    response = client.post(
        "/agent/register",
        {"name": "edge-1", "hostname": "h1"},
        format="json",
        REMOTE_ADDR="10.2.3.4",
    )
    agent_id = response.json()["agent_id"]
    (registered,) = entries(AuditEntry.AGENT_REGISTERED)
    assert registered.actor == f"agent:{agent_id}"
    assert registered.source_ip == "10.2.3.4"
    assert registered.detail["name"] == "edge-1" and registered.detail["hostname"] == "h1"
    assert response.json()["agent_token"] not in json.dumps(registered.detail)

    admin_api.post(f"/agents/{agent_id}/revoke")
    admin_api.post(f"/agents/{agent_id}/revoke")  # again: nothing new happens
    (revoked,) = entries(AuditEntry.AGENT_REVOKED)
    assert revoked.actor == ADMIN_EMAIL
    assert revoked.target == f"agent {agent_id}"


def test_commands_are_recorded_as_the_system(capsys):
    call_command("create_registration_token")
    (entry,) = entries(AuditEntry.REGISTRATION_TOKEN_ISSUED)
    assert entry.actor == "system" and entry.source_ip is None
    assert capsys.readouterr().out.strip() not in json.dumps(entry.detail)


def test_changes_made_in_the_django_admin_are_recorded(admin_user, client):
    client.force_login(admin_user)
    token, _ = issue_registration_token()
    agent, _ = register_agent(token=token, name="old-name")
    response = client.post(
        f"/admin/agents/agent/{agent.pk}/change/",
        {"name": "new-name", "hostname": "h9"},
        REMOTE_ADDR="192.0.2.44",
    )
    assert response.status_code == 302, response.content
    assert Agent.objects.get(pk=agent.pk).name == "new-name"
    (entry,) = entries(AuditEntry.ADMIN_CHANGED)
    assert entry.actor == ADMIN_EMAIL
    assert entry.source_ip == "192.0.2.44"
    assert entry.target == "agent new-name"
    assert "Name" in entry.detail["change"] and "Hostname" in entry.detail["change"]

    response = client.post(
        "/admin/accounts/user/add/",
        {"email": "ops@example.com", "password1": "Long-Pass-7!", "password2": "Long-Pass-7!"},
    )
    assert response.status_code == 302, response.content
    (added,) = entries(AuditEntry.ADMIN_ADDED)
    assert added.target == "user ops@example.com"
    user_id = added.detail["object_id"]
    client.post(f"/admin/accounts/user/{user_id}/delete/", {"post": "yes"})
    (deleted,) = entries(AuditEntry.ADMIN_DELETED)
    assert deleted.target == "user ops@example.com"


def test_get_audit_lists_newest_first_and_filters(admin_api):
    admin_api.post("/config/admin", GOOD, format="json")
    admin_api.put("/config/admin", {"pooling_interval": 45}, format="json")
    record_event(AuditEntry.AGENT_REVOKED, actor="other@example.com", target="agent x")
    response = admin_api.get("/audit")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"count", "next", "previous", "results"}
    actions = [row["action"] for row in body["results"]]
    assert actions == [
        AuditEntry.AGENT_REVOKED,
        AuditEntry.CONFIG_UPDATED,
        AuditEntry.CONFIG_CREATED,
        AuditEntry.LOGIN_SUCCEEDED,
    ]
    row = body["results"][1]
    assert set(row) == {
        "id",
        "at",
        "action",
        "actor",
        "source_ip",
        "target",
        "application",
        "environment",
        "detail",
    }
    assert row["detail"]["after"]["pooling_interval"] == 45

    only_updates = admin_api.get("/audit", {"action": AuditEntry.CONFIG_UPDATED}).json()
    assert [row["action"] for row in only_updates["results"]] == [AuditEntry.CONFIG_UPDATED]
    by_actor = admin_api.get("/audit", {"actor": "OTHER@example.com"}).json()
    assert [row["actor"] for row in by_actor["results"]] == ["other@example.com"]
    both = admin_api.get("/audit", {"actor": ADMIN_EMAIL, "action": "agent.revoked"}).json()
    assert both["count"] == 0


def test_get_audit_is_paginated(admin_api, settings):
    for i in range(55):
        record_event(AuditEntry.AGENT_REVOKED, actor="system", target=f"agent {i}")
    first = admin_api.get("/audit").json()
    assert first["count"] == 56 and len(first["results"]) == 50
    assert first["results"][0]["target"] == "agent 54"
    second = admin_api.get(first["next"]).json()
    assert len(second["results"]) == 6
    assert second["results"][-1]["action"] == AuditEntry.LOGIN_SUCCEEDED


@pytest.mark.parametrize("query", ["action=bogus", "action=login", "actor=" + "x" * 300])
def test_bad_audit_filter_is_400(admin_api, query):
    response = admin_api.get(f"/audit?{query}")
    assert response.status_code == 400


def test_audit_needs_an_admin(api, agent_api, django_user_model):
    assert api.get("/audit").status_code == 401
    assert agent_api.get("/audit").status_code == 401
    django_user_model.objects.create_user(email="user@example.com", password="Pass-word-123")
    client = APIClient()
    access = client.post(
        "/login", {"email": "user@example.com", "password": "Pass-word-123"}, format="json"
    ).json()["access"]
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    assert client.get("/audit").status_code == 403


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_the_api_cannot_write_the_audit_log(admin_api, method):
    before = AuditEntry.objects.count()
    response = getattr(admin_api, method)("/audit", {"action": "login.failed"}, format="json")
    assert response.status_code == 405
    assert AuditEntry.objects.count() == before


def test_entries_cannot_be_changed_or_deleted_in_code():
    entry = record_event(AuditEntry.AGENT_REVOKED, target="agent x")
    entry.target = "agent y"
    with pytest.raises(AuditLogIsAppendOnly):
        entry.save()
    with pytest.raises(AuditLogIsAppendOnly):
        entry.delete()
    with pytest.raises(AuditLogIsAppendOnly):
        AuditEntry.objects.filter(pk=entry.pk).update(target="agent z")
    with pytest.raises(AuditLogIsAppendOnly):
        AuditEntry.objects.all().delete()
    assert AuditEntry.objects.get(pk=entry.pk).target == "agent x"


def test_the_admin_cannot_add_change_or_delete_entries(admin_user, client):
    client.force_login(admin_user)
    entry = record_event(AuditEntry.AGENT_REVOKED, actor="someone@example.com", target="agent x")
    listing = client.get("/admin/audit/auditentry/?q=someone")
    assert listing.status_code == 200
    assert b"someone@example.com" in listing.content
    assert client.get("/admin/audit/auditentry/add/").status_code == 403
    detail = client.get(f"/admin/audit/auditentry/{entry.pk}/change/")
    assert detail.status_code == 200
    assert b'name="_save"' not in detail.content
    assert (
        client.post(f"/admin/audit/auditentry/{entry.pk}/change/", {"target": "y"}).status_code
        == 403
    )
    assert (
        client.post(f"/admin/audit/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    response = client.post(
        "/admin/audit/auditentry/",
        {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"},
    )
    assert AuditEntry.objects.filter(pk=entry.pk).exists()
    assert response.status_code in (200, 302)


def test_revoking_through_the_service_records_the_given_actor(admin_user, registered_agent):
    agent, _ = registered_agent
    revoke_agent(agent, actor=admin_user, source_ip="192.0.2.1")
    (entry,) = entries(AuditEntry.AGENT_REVOKED)
    assert (entry.actor, entry.source_ip) == (ADMIN_EMAIL, "192.0.2.1")


def test_audit_endpoint_is_in_the_openapi_schema(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/audit"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"action", "actor", "page"}
    assert set(operation["responses"]) >= {"200", "400", "401"}
