"""The Django admin as operators use it: dashboard, versions, rollback, agents, tokens."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.agents.models import Agent, RegistrationToken
from apps.agents.services import issue_registration_token, register_agent
from apps.audit.models import AuditEntry
from apps.configs.models import ConfigVersion
from controller_site.tokens import hash_token

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/task"


@pytest.fixture
def operator(client, admin_user):
    client.force_login(admin_user)
    return client


def make_agent(name: str, **fields) -> Agent:
    token, _ = issue_registration_token()
    agent, _ = register_agent(token=token, name=name)
    Agent.objects.filter(pk=agent.pk).update(**fields)
    return Agent.objects.get(pk=agent.pk)


def test_dashboard_shows_version_interval_fleet_and_last_changes(operator, publish):
    publish(URL, 30)
    publish(URL, 45)
    now = timezone.now()
    make_agent("a", applied_version=2, last_seen=now)
    make_agent("b", applied_version=1, last_seen=now)
    make_agent("c", applied_version=2, last_seen=now - timedelta(hours=1))
    make_agent("d", revoked_at=now)
    response = operator.get("/admin/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<td id="current-version">2</td>' in html
    assert '<td id="current-interval">45 s</td>' in html
    assert dict((s, c) for s, _, c in response.context["fleet"]) == {
        "in_sync": 1,
        "behind": 1,
        "stale": 1,
        "revoked": 1,
    }
    assert "Config updated" in html or "Config created" in html
    assert 'id="recent-changes"' in html


def test_dashboard_before_any_config(operator):
    response = operator.get("/admin/")
    assert response.status_code == 200
    assert b"No configuration yet." in response.content


def test_dashboard_needs_staff(client, django_user_model):
    assert client.get("/admin/").status_code == 302
    user = django_user_model.objects.create_user(email="u@example.com", password="Pass-word-123")
    client.force_login(user)
    assert client.get("/admin/").status_code == 302


def test_versions_list_shows_changed_fields_and_is_read_only(operator, publish):
    publish(URL, 30)
    publish(URL, 60)
    publish(URL + "/b", 60)
    response = operator.get("/admin/configs/configversion/")
    assert response.status_code == 200
    rows = {
        obj.version: response.context["cl"].model_admin.changed(obj)
        for obj in response.context["cl"].result_list
    }
    assert rows == {3: "config_url", 2: "pooling_interval", 1: "config_url, pooling_interval"}
    version = ConfigVersion.objects.get(version=1)
    assert operator.get("/admin/configs/configversion/add/").status_code == 403
    change = operator.post(
        f"/admin/configs/configversion/{version.pk}/change/", {"pooling_interval": 99}
    )
    assert change.status_code == 403
    assert (
        operator.post(
            f"/admin/configs/configversion/{version.pk}/delete/", {"post": "yes"}
        ).status_code
        == 403
    )
    assert ConfigVersion.objects.get(version=1).pooling_interval == 30


def test_change_form_makes_a_version_through_the_service(operator, admin_user):
    page = operator.get("/admin/configs/configversion/change-config/")
    assert page.status_code == 200
    response = operator.post(
        "/admin/configs/configversion/change-config/",
        {"config_url": URL, "pooling_interval": "30"},
    )
    assert response.status_code == 302
    config = ConfigVersion.objects.get()
    assert (config.version, config.created_by) == (1, admin_user)
    operator.post(
        "/admin/configs/configversion/change-config/",
        {"config_url": URL, "pooling_interval": "90"},
    )
    assert ConfigVersion.objects.order_by("-version").first().pooling_interval == 90
    actions = list(
        AuditEntry.objects.filter(action__startswith="config.")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == [AuditEntry.CONFIG_CREATED, AuditEntry.CONFIG_UPDATED]
    form = operator.get("/admin/configs/configversion/change-config/").context["form"]
    assert form.initial == {"config_url": URL, "pooling_interval": 90}


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"config_url": "ftp://x.example/", "pooling_interval": "30"}, "config_url"),
        ({"config_url": "http://u:p@x.example/", "pooling_interval": "30"}, "config_url"),
        ({"config_url": URL, "pooling_interval": "29"}, "pooling_interval"),
        ({"config_url": URL, "pooling_interval": "86401"}, "pooling_interval"),
        ({"config_url": URL, "pooling_interval": "abc"}, "pooling_interval"),
        ({"config_url": "", "pooling_interval": "30"}, "config_url"),
    ],
)
def test_change_form_applies_the_api_rules(operator, values, field):
    response = operator.post("/admin/configs/configversion/change-config/", values)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert ConfigVersion.objects.count() == 0


def test_identical_content_in_the_form_makes_no_version(operator, publish):
    publish(URL, 30)
    response = operator.post(
        "/admin/configs/configversion/change-config/",
        {"config_url": URL, "pooling_interval": "30"},
        follow=True,
    )
    assert b"Nothing changed" in response.content
    assert ConfigVersion.objects.count() == 1


def test_rollback_action_asks_for_confirmation_then_rolls_back(operator, publish, admin_user):
    first = publish(URL, 30)
    publish(URL, 60)
    ask = operator.post(
        "/admin/configs/configversion/",
        {"action": "rollback_to_version", "_selected_action": [first.pk], "index": 0},
    )
    assert ask.status_code == 200
    assert b"Roll back to version 1?" in ask.content
    assert ConfigVersion.objects.count() == 2
    done = operator.post(
        "/admin/configs/configversion/",
        {"action": "rollback_to_version", "_selected_action": [first.pk], "confirmed": "yes"},
        follow=True,
    )
    assert done.status_code == 200
    assert b"Rolled back: version 3" in done.content
    newest = ConfigVersion.objects.order_by("-version").first()
    assert (newest.version, newest.pooling_interval, newest.rolled_back_from) == (3, 30, 1)
    assert newest.created_by == admin_user
    assert AuditEntry.objects.filter(action=AuditEntry.CONFIG_ROLLED_BACK).count() == 1


def test_rollback_action_needs_exactly_one_version(operator, publish):
    first, second = publish(URL, 30), publish(URL, 60)
    response = operator.post(
        "/admin/configs/configversion/",
        {
            "action": "rollback_to_version",
            "_selected_action": [first.pk, second.pk],
            "confirmed": "yes",
        },
        follow=True,
    )
    assert b"Select exactly one version" in response.content
    assert ConfigVersion.objects.count() == 2


def test_agents_list_has_badges_and_filters_by_status(operator, publish):
    publish(URL, 30)
    now = timezone.now()
    make_agent("fresh", applied_version=1, last_seen=now)
    make_agent("late", applied_version=1, last_seen=now - timedelta(minutes=5))
    page = operator.get("/admin/agents/agent/")
    html = page.content.decode()
    assert "status-in_sync" in html and "status-stale" in html
    only_stale = operator.get("/admin/agents/agent/?status=stale")
    assert [str(a) for a in only_stale.context["cl"].result_list] == ["late"]
    only_sync = operator.get("/admin/agents/agent/?status=in_sync")
    assert [str(a) for a in only_sync.context["cl"].result_list] == ["fresh"]


def test_the_filtered_agents_list_reads_each_scope_s_state_once(operator, publish, monkeypatch):
    from apps.agents import admin as agents_admin

    publish(URL, 30)
    make_agent("fresh", applied_version=1, last_seen=timezone.now())
    reads = []
    real = agents_admin.get_current_state
    monkeypatch.setattr(
        agents_admin, "get_current_state", lambda scope_id: reads.append(scope_id) or real(scope_id)
    )
    page = operator.get("/admin/agents/agent/?status=in_sync")
    assert [str(a) for a in page.context["cl"].result_list] == ["fresh"]
    # The status filter and the target column judge by the same read.
    assert len(reads) == 1


def test_revoke_action_confirms_then_revokes(operator):
    agent = make_agent("edge")
    ask = operator.post(
        "/admin/agents/agent/",
        {"action": "revoke_agents", "_selected_action": [agent.pk], "index": 0},
    )
    assert b"Revoke 1 agent?" in ask.content
    assert Agent.objects.get(pk=agent.pk).revoked_at is None
    done = operator.post(
        "/admin/agents/agent/",
        {"action": "revoke_agents", "_selected_action": [agent.pk], "confirmed": "yes"},
        follow=True,
    )
    assert b"Revoked 1 agent." in done.content
    assert Agent.objects.get(pk=agent.pk).revoked_at is not None
    entry = AuditEntry.objects.get(action=AuditEntry.AGENT_REVOKED)
    assert entry.actor == "admin@example.com" and entry.source_ip == "127.0.0.1"
    assert (
        operator.post(f"/admin/agents/agent/{agent.pk}/delete/", {"post": "yes"}).status_code == 403
    )


def test_issue_token_page_shows_the_token_once_with_its_expiry(operator):
    listing = operator.get("/admin/agents/registrationtoken/")
    assert b"Issue token" in listing.content
    form = operator.get("/admin/agents/registrationtoken/issue/")
    assert form.status_code == 200
    assert form.context["token"] is None
    response = operator.post("/admin/agents/registrationtoken/issue/", {"ttl": "600"})
    token = response.context["token"]
    assert token.startswith("reg_")
    assert token in response.content.decode()
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]
    record = RegistrationToken.objects.get()
    assert record.token_hash == hash_token(token)
    assert timedelta(seconds=595) < record.expires_at - record.created_at < timedelta(seconds=605)
    assert operator.get("/admin/agents/registrationtoken/").content.decode().count(token) == 0
    bad = operator.post("/admin/agents/registrationtoken/issue/", {"ttl": "5"})
    assert "ttl" in bad.context["form"].errors
    assert RegistrationToken.objects.count() == 1


def test_audit_log_is_searchable_in_the_admin(operator, publish):
    publish(URL, 30)
    response = operator.get("/admin/audit/auditentry/?q=config+v1")
    assert response.status_code == 200
    assert [e.action for e in response.context["cl"].result_list] == [AuditEntry.CONFIG_CREATED]
    by_action = operator.get("/admin/audit/auditentry/?action__exact=config.created")
    assert by_action.context["cl"].result_count == 1


def test_preflight_button_without_a_live_agent_says_so_and_saves_nothing(operator):
    response = operator.post(
        "/admin/configs/configversion/change-config/",
        {"config_url": URL, "pooling_interval": "30", "_preflight": "1"},
    )

    assert response.status_code == 200
    assert "No agent is live" in response.content.decode()
    assert ConfigVersion.objects.count() == 0


def test_preflight_button_checks_the_url_first(operator):
    response = operator.post(
        "/admin/configs/configversion/change-config/",
        {"config_url": "ftp://x.example/", "pooling_interval": "30", "_preflight": "1"},
    )

    assert response.status_code == 200
    assert "config_url" in response.context["form"].errors
    assert ConfigVersion.objects.count() == 0


@pytest.mark.parametrize(
    ("page", "action"),
    [
        ("/admin/configs/configversion/", "rollback_to_version"),
        ("/admin/agents/agent/", "revoke_agents"),
    ],
)
def test_rollback_and_revoke_refuse_a_missing_csrf_token_and_a_get(
    admin_user, publish, page, action
):
    from django.test import Client

    first = publish(URL, 30)
    publish(URL, 60)
    agent = make_agent("csrf")
    selected = first.pk if action == "rollback_to_version" else agent.pk
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    form = {"action": action, "_selected_action": [selected], "confirmed": "yes"}

    def unchanged() -> bool:
        return (
            ConfigVersion.objects.count() == 2 and Agent.objects.get(pk=agent.pk).revoked_at is None
        )

    assert browser.post(page, form).status_code == 403
    assert unchanged()
    assert browser.get(page, form).status_code in (200, 302)
    assert unchanged()
    # The same form with the page's CSRF token is carried out: the refusals above were CSRF's.
    browser.get(page)
    done = browser.post(
        page, {**form, "csrfmiddlewaretoken": browser.cookies["csrftoken"].value}, follow=True
    )
    assert done.status_code == 200
    assert not unchanged()
