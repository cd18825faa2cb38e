"""Roles held in part of the fleet: in one application, one environment, or one application's
environment. The seed's routes act on the default scope (default/production): a role held
there, or everywhere, allows them; one held elsewhere does not."""

import pytest
from django.core.management import CommandError, call_command

from apps.accounts.models import ScopedRole, User
from apps.accounts.roles import APPROVER, EDITOR, OPERATOR, VIEWER
from apps.accounts.services import grant_scoped_role, take_scoped_roles
from apps.audit.models import AuditEntry
from apps.changes.services import propose_change
from apps.configs.models import ConfigVersion
from apps.scopes.models import Application, Environment
from apps.scopes.services import create_application, create_environment, default_scope
from tests.support.clients import api_as
from tests.support.scopes import set_approvals, user_with

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/a"
NEW_URL = "http://upstream.example/b"


@pytest.fixture
def fleet(publish):
    """default in staging and production, and a second application."""
    # The migration made the default scope; a transactional test before may have flushed it.
    default_scope()
    create_environment("staging", order=-10)
    create_application("payments")
    publish(URL, 30)


def newest_url() -> str:
    return ConfigVersion.objects.order_by("-version").first().config_url


@pytest.mark.parametrize(
    ("application", "environment"),
    [("default", None), (None, "production"), ("default", "production")],
    ids=["the application", "the environment", "the scope"],
)
def test_an_editor_of_the_default_scope_publishes_there(fleet, application, environment):
    editor = api_as(user_with(EDITOR, application, environment))
    answer = editor.put("/config/admin", {"config_url": NEW_URL}, "json")
    assert answer.status_code == 200, answer.content
    assert newest_url() == NEW_URL


@pytest.mark.parametrize(
    ("application", "environment"),
    [("payments", None), (None, "staging"), ("default", "staging"), ("payments", "production")],
    ids=["another application", "another environment", "another scope", "the other app there"],
)
def test_an_editor_of_another_part_of_the_fleet_gets_403_and_changes_nothing(
    fleet, application, environment
):
    editor = api_as(user_with(EDITOR, application, environment))
    answer = editor.put("/config/admin", {"config_url": NEW_URL}, "json")
    assert answer.status_code == 403, answer.content
    assert answer.json()["required_role"] == EDITOR
    assert newest_url() == URL
    # Nor may they read the default scope's configuration.
    assert editor.get("/config/admin").status_code == 403


def test_a_scoped_role_is_only_that_role(fleet):
    viewer = api_as(user_with(VIEWER, "default", "production"))
    assert viewer.get("/config/admin").status_code == 200
    assert viewer.get("/config/admin/history").status_code == 200
    assert viewer.put("/config/admin", {"config_url": NEW_URL}, "json").status_code == 403
    # Reading what belongs to no scope needs a role anywhere.
    assert viewer.get("/apps").status_code == 200
    assert viewer.get("/audit").status_code == 200
    nobody = api_as(User.objects.create_user(email="nobody@example.com"))
    assert nobody.get("/apps").status_code == 403


def test_an_approver_of_production_approves_production_s_requests_only(fleet):
    set_approvals(1)
    author = User.objects.create_user(email="author@example.com")
    change = propose_change(author=author, config_url=NEW_URL)
    staging = api_as(user_with(APPROVER, None, "staging"))
    refused = staging.post(f"/config/admin/changes/{change.pk}/approve", {}, "json")
    assert refused.status_code == 403, refused.content
    assert newest_url() == URL
    production = api_as(user_with(APPROVER, None, "production"))
    approved = production.post(f"/config/admin/changes/{change.pk}/approve", {}, "json")
    assert approved.status_code == 200, approved.content
    assert newest_url() == NEW_URL


def test_an_operator_of_the_scope_may_issue_its_registration_tokens(fleet):
    operator = api_as(user_with(OPERATOR, "default", "production"))
    assert operator.post("/agent/admin", {}, "json").status_code == 201
    elsewhere = api_as(user_with(OPERATOR, "payments", None))
    assert elsewhere.post("/agent/admin", {}, "json").status_code == 403


def test_login_lists_the_grants_with_their_scope(fleet, api):
    user = User.objects.create_user(email="ed@example.com", password="Long-Pass-7!")
    staging = Environment.objects.get(name="staging")
    payments = Application.objects.get(name="payments")
    grant_scoped_role(user, EDITOR, application=payments, environment=staging)
    grant_scoped_role(user, VIEWER, environment=staging)
    answer = api.post("/login", {"email": "ed@example.com", "password": "Long-Pass-7!"}, "json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["roles"] == []
    assert answer.json()["grants"] == [
        {"role": EDITOR, "application": "payments", "environment": "staging"},
        {"role": VIEWER, "application": None, "environment": "staging"},
    ]


def test_grants_are_audited_and_taken_away(fleet):
    user = User.objects.create_user(email="ed@example.com")
    payments = Application.objects.get(name="payments")
    assert grant_scoped_role(user, EDITOR, application=payments) is True
    assert grant_scoped_role(user, EDITOR, application=payments) is False  # held already
    assert take_scoped_roles(user, application=payments) == [EDITOR]
    entries = AuditEntry.objects.filter(action=AuditEntry.ROLES_CHANGED).order_by("id")
    assert [entry.detail for entry in entries] == [
        {"added": [EDITOR], "removed": [], "scope": "payments/*"},
        {"added": [], "removed": [EDITOR], "scope": "payments/*"},
    ]
    assert not ScopedRole.objects.exists()
    with pytest.raises(ValueError):
        grant_scoped_role(user, EDITOR)


def test_grant_role_gives_and_takes_a_role_in_part_of_the_fleet(fleet, capsys):
    User.objects.create_user(email="ed@example.com")
    call_command("grant_role", "ed@example.com", EDITOR, "--application", "payments")
    call_command(
        "grant_role",
        "ed@example.com",
        VIEWER,
        "--application",
        "default",
        "--environment",
        "staging",
    )
    out = capsys.readouterr().out
    assert "editor in payments/*" in out and "viewer in default/staging" in out
    assert ScopedRole.objects.count() == 2
    call_command("grant_role", "ed@example.com", "none", "--application", "payments")
    assert list(ScopedRole.objects.values_list("role", flat=True)) == [VIEWER]
    with pytest.raises(CommandError, match="Application 'nope' does not exist"):
        call_command("grant_role", "ed@example.com", EDITOR, "--application", "nope")
    assert ScopedRole.objects.count() == 1


def test_a_superuser_gives_and_takes_a_scoped_role_in_the_admin(fleet, client, admin_user):
    user = User.objects.create_user(email="ed@example.com")
    client.force_login(admin_user)
    staging = Environment.objects.get(name="staging")
    both_missing = client.post("/admin/accounts/scopedrole/add/", {"user": user.pk, "role": EDITOR})
    assert both_missing.status_code == 200  # the form again, with the constraint's error
    assert not ScopedRole.objects.exists()

    added = client.post(
        "/admin/accounts/scopedrole/add/",
        {"user": user.pk, "role": EDITOR, "environment": staging.pk},
    )

    assert added.status_code == 302, added.content
    grant = ScopedRole.objects.get()
    assert (grant.user, grant.role, grant.application, grant.environment) == (
        user,
        EDITOR,
        None,
        staging,
    )
    deleted = client.post(f"/admin/accounts/scopedrole/{grant.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    assert not ScopedRole.objects.exists()
    details = list(
        AuditEntry.objects.filter(action=AuditEntry.ROLES_CHANGED)
        .order_by("id")
        .values_list("actor", "detail")
    )
    assert details == [
        (admin_user.email, {"added": [EDITOR], "removed": [], "scope": "*/staging"}),
        (admin_user.email, {"added": [], "removed": [EDITOR], "scope": "*/staging"}),
    ]
