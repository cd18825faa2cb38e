"""Applications and environments: GET/POST /apps, GET/PATCH /apps/{app}, GET/POST /envs,
GET/PATCH /envs/{env}; each environment's rules (approvals, default rollout plan) applied to the
default scope's changes; the audit log's scope."""

import pytest
from django.db import IntegrityError, transaction

from apps.accounts.roles import EDITOR, OPERATOR, VIEWER
from apps.audit.models import AuditEntry
from apps.configs.models import ConfigVersion
from apps.rollouts.models import Rollout
from apps.scopes.models import Application, Environment, Scope
from apps.scopes.services import default_scope
from tests.support.clients import client_for
from tests.support.scopes import set_approvals, set_default_rollout

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/a"
NEW_URL = "http://upstream.example/b"


@pytest.fixture(autouse=True)
def _default_scope():
    # The migration made it; a transactional test before this one flushed it away.
    default_scope()


@pytest.fixture
def operator():
    return client_for("operator@example.com", OPERATOR)


@pytest.fixture
def root():
    return client_for("root@example.com", superuser=True)


def test_the_default_scope_exists_from_the_migration_with_the_settings_names():
    scope = default_scope()
    assert (scope.application.name, scope.environment.name) == ("default", "production")
    assert Scope.objects.count() == 1


def test_an_operator_makes_an_application_present_in_every_environment(operator, root):
    assert root.post("/envs", {"name": "staging", "order": -10}, "json").status_code == 201

    answer = operator.post("/apps", {"name": "payments", "description": "Card payments"}, "json")

    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["name"] == "payments" and body["description"] == "Card payments"
    empty = {"in_sync": 0, "behind": 0, "stale": 0, "revoked": 0}
    assert body["environments"] == [
        {"environment": "staging", "current_version": 0, "rollout_state": None, "agents": empty},
        {"environment": "production", "current_version": 0, "rollout_state": None, "agents": empty},
    ]
    assert sorted(
        Scope.objects.filter(application__name="payments").values_list(
            "environment__name", flat=True
        )
    ) == ["production", "staging"]
    entry = AuditEntry.objects.get(action=AuditEntry.APPLICATION_CREATED)
    assert (entry.actor, entry.target) == ("operator@example.com", "application:payments")


@pytest.mark.parametrize(
    "name", ["Payments", "-payments", "pay_ments", "pay ments", "a" * 64, "", "påy", None]
)
def test_a_bad_application_name_is_400_and_stores_nothing(operator, name):
    answer = operator.post("/apps", {"name": name}, "json")
    assert answer.status_code == 400, answer.content
    assert "name" in answer.json()
    assert list(Application.objects.values_list("name", flat=True)) == ["default"]


def test_a_taken_application_name_is_409(operator):
    assert operator.post("/apps", {"name": "search"}, "json").status_code == 201
    answer = operator.post("/apps", {"name": "search", "description": "again"}, "json")
    assert answer.status_code == 409, answer.content
    assert "search" in answer.json()["detail"]
    assert Application.objects.get(name="search").description == ""


def test_an_editor_may_read_applications_but_not_make_one():
    editor = client_for("editor@example.com", EDITOR)
    answer = editor.post("/apps", {"name": "payments"}, "json")
    assert answer.status_code == 403
    assert answer.json()["required_role"] == OPERATOR
    assert not Application.objects.filter(name="payments").exists()
    listed = editor.get("/apps")
    assert listed.status_code == 200
    assert [app["name"] for app in listed.json()["results"]] == ["default"]


def test_unknown_application_or_environment_is_404_naming_it(operator):
    answer = operator.get("/apps/nope")
    assert answer.status_code == 404
    assert answer.json()["detail"] == "Application 'nope' does not exist."
    answer = operator.get("/envs/nowhere")
    assert answer.status_code == 404
    assert answer.json()["detail"] == "Environment 'nowhere' does not exist."


def test_an_application_shows_each_scope_s_version_rollout_and_agents(
    operator, publish, registered_agent
):
    publish(URL, 30)
    agent, _ = registered_agent
    agent.applied_version = 1
    agent.last_seen = agent.created_at
    agent.save()

    body = operator.get("/apps/default").json()

    (production,) = body["environments"]
    assert production["current_version"] == 1
    assert production["rollout_state"] is None
    assert production["agents"] == {"in_sync": 1, "behind": 0, "stale": 0, "revoked": 0}


def test_the_description_changes_and_is_audited_but_the_name_does_not(operator):
    operator.post("/apps", {"name": "search"}, "json")
    answer = operator.patch("/apps/search", {"description": "Search", "name": "other"}, "json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["name"] == "search" and answer.json()["description"] == "Search"
    entry = AuditEntry.objects.get(action=AuditEntry.APPLICATION_CHANGED)
    assert entry.detail == {"description": {"before": "", "after": "Search"}}
    assert operator.patch("/apps/search", {}, "json").status_code == 400


def test_environments_are_a_superuser_s_and_listed_in_their_order(operator, root, settings):
    settings.CONFIG_APPROVALS_REQUIRED = 2
    refused = operator.post("/envs", {"name": "staging"}, "json")
    assert refused.status_code == 403
    assert refused.json()["required_role"] == "superuser"
    assert operator.patch("/envs/production", {"approvals_required": 0}, "json").status_code == 403

    made = root.post("/envs", {"name": "dev", "order": -10}, "json")
    assert made.status_code == 201, made.content
    # A new environment takes CONFIG_APPROVALS_REQUIRED unless told otherwise.
    assert made.json()["approvals_required"] == 2
    assert made.json()["default_rollout"] is None
    listed = operator.get("/envs").json()["results"]
    assert [env["name"] for env in listed] == ["dev", "production"]
    # Every application is in it at once.
    assert Scope.objects.filter(application__name="default", environment__name="dev").exists()


def test_a_default_rollout_is_checked_as_a_rollout_plan_and_kept_completed(root):
    bad = root.patch("/envs/production", {"default_rollout": {"waves": [50, 40]}}, "json")
    assert bad.status_code == 400, bad.content
    assert "waves" in str(bad.json())
    unknown = root.patch("/envs/production", {"default_rollout": {"wavez": [100]}}, "json")
    assert unknown.status_code == 400
    assert Environment.objects.get(name="production").default_rollout is None

    good = root.patch(
        "/envs/production", {"default_rollout": {"waves": [25, 100]}, "order": 5}, "json"
    )

    assert good.status_code == 200, good.content
    plan = Environment.objects.get(name="production").default_rollout
    assert plan["waves"] == [25, 100] and plan["auto_rollback"] is True
    assert plan["canary_labels"] == {} and plan["min_hits"] == 20
    entry = AuditEntry.objects.get(action=AuditEntry.ENVIRONMENT_CHANGED)
    assert entry.detail["order"] == {"before": 0, "after": 5}
    assert entry.detail["default_rollout"]["before"] is None


def test_an_environment_name_is_checked_like_an_application_s(root):
    for name in ("Prod", "prod_1", "x" * 64):
        assert root.post("/envs", {"name": name}, "json").status_code == 400
    assert root.post("/envs", {"name": "production"}, "json").status_code == 409
    assert root.post("/envs", {"name": "qa", "approvals_required": -1}, "json").status_code == 400
    assert list(Environment.objects.values_list("name", flat=True)) == ["production"]


def test_the_environment_s_approvals_decide_whether_an_editor_s_change_waits(publish):
    publish(URL, 30)
    editor = client_for("editor@example.com", EDITOR)
    set_approvals(1)
    waiting = editor.put("/config/admin", {"config_url": NEW_URL}, "json")
    assert waiting.status_code == 202, waiting.content
    set_approvals(0)
    published = editor.put("/config/admin", {"config_url": NEW_URL}, "json")
    assert published.status_code == 200, published.content
    assert ConfigVersion.objects.order_by("-version").first().config_url == NEW_URL


def test_a_change_naming_no_plan_follows_the_environment_s_default_rollout(
    publish, registered_agent
):
    editor = client_for("editor@example.com", EDITOR)
    set_default_rollout({"waves": [50, 100], "bake_seconds": 60})
    # The first version has nothing to roll out from: it goes at once.
    first = editor.post("/config/admin", {"config_url": URL, "pooling_interval": 30}, "json")
    assert first.status_code == 201, first.content
    assert not Rollout.objects.exists()

    second = editor.put("/config/admin", {"config_url": NEW_URL}, "json")

    assert second.status_code == 200, second.content
    rollout = Rollout.objects.get(version=2)
    assert rollout.waves == [50, 100] and rollout.bake_seconds == 60
    assert rollout.state == Rollout.ROLLING


def test_an_emergency_goes_at_once_whatever_the_default_rollout(publish):
    publish(URL, 30)
    set_approvals(1)
    set_default_rollout({"waves": [50, 100]})
    root = client_for("root@example.com", superuser=True)
    answer = root.put(
        "/config/admin",
        {"config_url": NEW_URL, "emergency": True, "reason": "upstream down"},
        "json",
    )
    assert answer.status_code == 200, answer.content
    assert not Rollout.objects.exists()


def test_audit_entries_name_their_scope_and_filter_by_it(publish, operator):
    publish(URL, 30)
    client_for("viewer@example.com", VIEWER).get("/audit")
    operator.post("/apps", {"name": "search"}, "json")

    scoped = operator.get("/audit?application=default&environment=production").json()["results"]

    assert [entry["action"] for entry in scoped] == [AuditEntry.CONFIG_CREATED]
    assert scoped[0]["application"] == "default" and scoped[0]["environment"] == "production"
    unscoped = operator.get(f"/audit?action={AuditEntry.APPLICATION_CREATED}").json()["results"]
    assert unscoped[0]["application"] == "" and unscoped[0]["environment"] == ""
    assert operator.get("/audit?application=Not_A_Name").status_code == 400
    assert operator.get("/audit?environment=staging").json()["results"] == []


def test_versions_are_numbered_within_their_scope():
    staging = Environment.objects.create(name="staging", order=1)
    other = Scope.objects.create(application=default_scope().application, environment=staging)
    ConfigVersion.objects.create(config_url=URL, pooling_interval=30, version=1)
    ConfigVersion.objects.create(config_url=URL, pooling_interval=30, version=1, scope=other)
    with pytest.raises(IntegrityError), transaction.atomic():
        ConfigVersion.objects.create(config_url=URL, pooling_interval=30, version=1, scope=other)
    assert ConfigVersion.objects.filter(version=1).count() == 2
