"""Comparing an application's environments and promoting a version from one to another: the same
change as any other in the target (its approvals, its default rollout), and read only where the
caller may read."""

import pytest

from apps.changes.models import ChangeRequest
from apps.configs.models import ConfigVersion
from apps.rollouts.models import Rollout
from apps.scopes.models import Environment
from tests.support.clients import api_as
from tests.support.scopes import make_two_by_two, user_with

pytestmark = pytest.mark.django_db

STAGING = "/apps/payments/envs/staging"
PRODUCTION = "/apps/payments/envs/production"
TESTED = {"config_url": "http://upstream.example/tested", "pooling_interval": 45}
OLD = {"config_url": "http://upstream.example/old", "pooling_interval": 30}


@pytest.fixture
def root():
    from apps.accounts.models import User

    make_two_by_two()
    user = User.objects.create_user(email="root@example.com", is_superuser=True)
    client = api_as(user)
    assert client.post(f"{PRODUCTION}/config/admin", OLD, "json").status_code == 201
    assert client.post(f"{STAGING}/config/admin", OLD, "json").status_code == 201
    assert client.put(f"{STAGING}/config/admin", TESTED, "json").status_code == 200
    return client


def current(environment: str) -> ConfigVersion:
    return (
        ConfigVersion.objects.filter(
            scope__application__name="payments", scope__environment__name=environment
        )
        .order_by("-version")
        .first()
    )


def test_compare_names_the_fields_that_differ(root):
    answer = root.get("/apps/payments/compare?from=staging&to=production")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["from"] == {"environment": "staging", "version": 2, **TESTED}
    assert body["to"] == {"environment": "production", "version": 1, **OLD}
    assert body["differences"] == ["config_url", "pooling_interval"] and body["same"] is False
    assert {"field": "pooling_interval", "from": 45, "to": 30} in body["fields"]
    assert root.get("/apps/payments/compare?from=staging&to=staging").json()["same"] is True
    assert root.get("/apps/payments/compare?from=staging").status_code == 400
    missing = root.get("/apps/payments/compare?from=staging&to=nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    assert root.get("/apps/nope/compare?from=staging&to=production").status_code == 404


def test_promote_publishes_the_source_s_content_in_the_target(root):
    answer = root.post(
        f"{PRODUCTION}/config/admin/promote", {"from_environment": "staging"}, "json"
    )
    assert answer.status_code == 201, answer.content
    assert answer.json()["version"] == 2
    promoted = current("production")
    assert (promoted.config_url, promoted.pooling_interval) == tuple(TESTED.values())
    # Again: already current, nothing new.
    again = root.post(f"{PRODUCTION}/config/admin/promote", {"from_environment": "staging"}, "json")
    assert again.status_code == 200 and current("production").version == 2
    assert root.get("/apps/payments/compare?from=staging&to=production").json()["same"] is True


def test_promote_takes_a_named_version_and_the_target_s_rules(root):
    production = Environment.objects.get(name="production")
    production.approvals_required = 1
    production.save()
    asked = root.post(
        f"{PRODUCTION}/config/admin/promote",
        {"from_environment": "staging", "version": 2},
        "json",
    )
    # Production needs an approver: a change request, nothing published yet.
    assert asked.status_code == 202, asked.content
    change = ChangeRequest.objects.get()
    assert (change.config_url, change.pooling_interval) == tuple(TESTED.values())
    assert current("production").version == 1
    production.approvals_required = 0
    production.default_rollout = {"waves": [50, 100], "bake_seconds": 60}
    production.save()
    rolled = root.post(
        f"{PRODUCTION}/config/admin/promote",
        {"from_environment": "staging", "version": 2},
        "json",
    )
    assert rolled.status_code == 201, rolled.content
    assert Rollout.objects.get(scope__environment__name="production").state == Rollout.ROLLING


@pytest.mark.parametrize(
    "body, status",
    [
        ({"from_environment": "production"}, 400),
        ({"from_environment": "nope"}, 404),
        ({"from_environment": "staging", "version": 9}, 404),
        ({"from_environment": "staging", "version": 0}, 400),
        ({}, 400),
    ],
)
def test_bad_promotions_are_refused_and_store_nothing(root, body, status):
    before = ConfigVersion.objects.count()
    answer = root.post(f"{PRODUCTION}/config/admin/promote", body, "json")
    assert answer.status_code == status, answer.content
    assert ConfigVersion.objects.count() == before


def test_promotion_and_comparison_need_a_role_in_both_scopes(root):
    production_only = user_with("editor", "payments", "production")
    client = api_as(production_only)
    refused = client.post(
        f"{PRODUCTION}/config/admin/promote", {"from_environment": "staging"}, "json"
    )
    assert refused.status_code == 403 and "payments/staging" in refused.json()["detail"]
    assert client.get("/apps/payments/compare?from=staging&to=production").status_code == 403
    staging_only = user_with("editor", "payments", "staging")
    promote = {"from_environment": "staging"}
    assert (
        api_as(staging_only).post(f"{PRODUCTION}/config/admin/promote", promote, "json").status_code
        == 403
    )
    assert current("production").version == 1
    # A viewer reads but cannot promote.
    viewer = user_with("viewer", None, "production")
    assert (
        api_as(viewer).post(f"{PRODUCTION}/config/admin/promote", promote, "json").status_code
        == 403
    )


def test_the_application_page_shows_environments_side_by_side_and_promotes(root, client):
    from apps.scopes.models import Application

    payments = Application.objects.get(name="payments")
    editor = user_with("editor", "payments", None)
    client.force_login(editor)
    page = client.get(f"/admin/scopes/application/{payments.pk}/change/")
    assert page.status_code == 200
    rows = {row["environment"]: row for row in page.context["environments"]}
    # staging comes before production: production's fields differ from it, and may take it.
    assert rows["staging"]["config_url"] == TESTED["config_url"]
    assert rows["production"]["differs"] == ["config_url", "pooling_interval"]
    assert rows["production"]["promote_from"] == "staging"
    html = page.content.decode()
    assert 'class="field-config_url differs"' in html and "Promote from staging" in html
    promoted = client.post(
        "/admin/scopes/application/payments/envs/production/promote/", {"from": "staging"}
    )
    assert promoted.status_code == 302
    assert (current("production").version, current("production").config_url) == (
        2,
        TESTED["config_url"],
    )
    after = client.get(f"/admin/scopes/application/{payments.pk}/change/", follow=True)
    assert "version 2 published" in after.content.decode()
    assert {row["environment"]: row for row in after.context["environments"]}["production"][
        "promote_from"
    ] is None


def test_the_promote_button_obeys_the_roles(root, client):
    from apps.scopes.models import Application

    payments = Application.objects.get(name="payments")
    # An editor of production alone may not read staging: no button, and a forged POST is
    # refused with nothing changed.
    client.force_login(user_with("editor", "payments", "production"))
    page = client.get(f"/admin/scopes/application/{payments.pk}/change/")
    rows = {row["environment"]: row for row in page.context["environments"]}
    assert rows["production"]["promote_from"] is None
    path = "/admin/scopes/application/payments/envs/production/promote/"
    refused = client.post(path, {"from": "staging"}, follow=True)
    assert "Not promoted" in refused.content.decode() and current("production").version == 1
    client.force_login(user_with("viewer", "payments", None))
    assert client.post(path, {"from": "staging"}).status_code == 403
    assert current("production").version == 1
