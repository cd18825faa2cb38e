"""Who may do what: every endpoint of the URL map and every admin page and action, per role.

The tables below are the rules as docs/roles.md states them. A route, method, admin page or admin
action that is not in them fails `test_every_*_has_a_rule`, so nothing new ships without a
decision about who may use it.
"""

import importlib
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.contrib import admin
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework.views import APIView

from apps.accounts.models import ApiToken, ScopedRole, User
from apps.accounts.roles import (
    ANY_ROLE,
    APPROVER,
    EDITOR,
    OPERATOR,
    ROLES,
    VIEWER,
    has_role,
    roles_of,
)
from apps.accounts.services import issue_tokens, set_roles
from apps.agents.models import Agent, RegistrationToken
from apps.agents.services import issue_registration_token, register_agent
from apps.audit.models import AuditEntry
from apps.changes.models import Approval, ChangeRequest, ScheduledChange
from apps.changes.services import propose_change
from apps.configs.actions import publish_config
from apps.configs.models import ConfigVersion
from apps.rollouts.models import Rollout
from apps.scopes.models import Application, Environment, Scope
from apps.scopes.services import create_environment, default_scope
from apps.webhooks.models import Delivery, WebhookEndpoint
from apps.webhooks.services import create_endpoint, send_test_event
from controller_site.urls import SCOPED
from tests.support.clients import api_as

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/task"
# Callers of the API who are not users: rules for the endpoints roles do not govern.
PUBLIC, AGENT, REGISTRATION = "public", "agent token", "registration token"
# An admin page nobody may use, not even a superuser (versions and the audit log are history).
NOBODY = "nobody"
SUPERUSER = "superuser"
# Everyone the tables are checked against: no role, each role, a superuser.
HOLDERS = ["none", *ROLES, SUPERUSER]

API_RULES = {
    ("login", "POST"): PUBLIC,
    ("login-refresh", "POST"): PUBLIC,
    ("logout", "POST"): PUBLIC,
    # Anyone with a role makes tokens for themselves, never beyond what they hold.
    ("tokens", "GET"): ANY_ROLE,
    ("tokens", "POST"): ANY_ROLE,
    ("token", "DELETE"): ANY_ROLE,
    ("config-admin", "GET"): ANY_ROLE,
    ("config-admin", "POST"): EDITOR,
    ("config-admin", "PUT"): EDITOR,
    ("config-history", "GET"): ANY_ROLE,
    ("config-rollback", "POST"): OPERATOR,
    ("config-promote", "POST"): EDITOR,
    ("config-preflight", "POST"): EDITOR,
    ("config-version", "GET"): AGENT,
    ("config-agent", "GET"): AGENT,
    ("config-stream", "GET"): AGENT,
    ("registration-token", "GET"): OPERATOR,
    ("registration-token", "POST"): OPERATOR,
    ("agent-register", "POST"): REGISTRATION,
    ("agent-heartbeat", "POST"): AGENT,
    ("agent-preflight", "POST"): AGENT,
    ("agents", "GET"): ANY_ROLE,
    ("agent", "PATCH"): OPERATOR,
    ("agent-revoke", "POST"): OPERATOR,
    ("audit", "GET"): ANY_ROLE,
    ("applications", "GET"): ANY_ROLE,
    ("application-compare", "GET"): ANY_ROLE,
    ("applications", "POST"): OPERATOR,
    ("application", "GET"): ANY_ROLE,
    ("application", "PATCH"): OPERATOR,
    # An environment's rules decide how many approvers a change needs: a superuser's.
    ("environments", "GET"): ANY_ROLE,
    ("environments", "POST"): SUPERUSER,
    ("environment", "GET"): ANY_ROLE,
    ("environment", "PATCH"): SUPERUSER,
    ("rollout", "GET"): ANY_ROLE,
    ("rollout-promote", "POST"): OPERATOR,
    ("rollout-pause", "POST"): OPERATOR,
    ("rollout-resume", "POST"): OPERATOR,
    ("rollout-abort", "POST"): OPERATOR,
    ("changes", "GET"): ANY_ROLE,
    ("change", "GET"): ANY_ROLE,
    ("change-approve", "POST"): APPROVER,
    ("change-reject", "POST"): APPROVER,
    ("change-cancel", "POST"): EDITOR,
    # A webhook receives news of every scope it asks for, and its URL names an outside system.
    ("webhooks", "GET"): OPERATOR,
    ("webhooks", "POST"): OPERATOR,
    ("webhook", "GET"): OPERATOR,
    ("webhook", "PATCH"): OPERATOR,
    ("webhook", "DELETE"): OPERATOR,
    ("webhook-rotate-secret", "POST"): OPERATOR,
    ("webhook-test", "POST"): OPERATOR,
    ("scheduled-changes", "GET"): ANY_ROLE,
    ("scheduled-change", "GET"): ANY_ROLE,
    # Any role reaches it; only its author or an operator of its scope cancels it (403 for
    # others, tests/test_scheduled.py): each caller here cancels their own.
    ("scheduled-change-cancel", "POST"): ANY_ROLE,
    ("healthz", "GET"): PUBLIC,
    ("readyz", "GET"): PUBLIC,
    ("metrics", "GET"): PUBLIC,
    ("schema", "GET"): PUBLIC,
    ("swagger-ui", "GET"): PUBLIC,
    ("redoc", "GET"): PUBLIC,
}
# Each route acting on a scope has a twin under /apps/{app}/envs/{env}/, with the same rule.
SCOPE_PREFIX = "/apps/default/envs/production"
API_RULES.update(
    {
        (f"scoped-{name}", method): rule
        for (name, method), rule in list(API_RULES.items())
        if name in {name for _, _, name in SCOPED}
    }
)

# model -> {page or action: rule}. Pages: the list (view), the add page, a POST to an object's
# change page, an object's delete page; plus each model's own pages and actions.
ADMIN_RULES = {
    "accounts.user": {
        "view": SUPERUSER,
        "add": SUPERUSER,
        "change": SUPERUSER,
        "delete": SUPERUSER,
        "delete_selected": SUPERUSER,
        "auth_user_password_change": SUPERUSER,
    },
    # Given and taken as a whole (each audited), never edited.
    "accounts.scopedrole": {
        "view": SUPERUSER,
        "add": SUPERUSER,
        "change": NOBODY,
        "delete": SUPERUSER,
        "delete_selected": SUPERUSER,
    },
    "configs.configversion": {
        "view": ANY_ROLE,
        "add": NOBODY,
        "change": NOBODY,
        "delete": NOBODY,
        "delete_selected": NOBODY,
        "rollback_to_version": OPERATOR,
        "configs_configversion_change_config": EDITOR,
    },
    "agents.agent": {
        "view": ANY_ROLE,
        "add": NOBODY,
        "change": OPERATOR,
        "delete": NOBODY,
        "delete_selected": NOBODY,
        "revoke_agents": OPERATOR,
    },
    # Each person's own tokens: made on the issue page, revoked by the action, never edited.
    "accounts.apitoken": {
        "view": ANY_ROLE,
        "add": NOBODY,
        "change": NOBODY,
        "delete": NOBODY,
        "delete_selected": NOBODY,
        "revoke_api_tokens": ANY_ROLE,
        "accounts_apitoken_issue": ANY_ROLE,
    },
    "agents.registrationtoken": {
        "view": ANY_ROLE,
        "add": NOBODY,
        "change": NOBODY,
        "delete": OPERATOR,
        "delete_selected": OPERATOR,
        "agents_registrationtoken_issue": OPERATOR,
    },
    # A rollout's page is read-only; its controls (promote, pause, resume, abort) are its own.
    "rollouts.rollout": {
        "view": ANY_ROLE,
        "add": NOBODY,
        "change": ANY_ROLE,
        "delete": NOBODY,
        "delete_selected": NOBODY,
        "rollouts_rollout_control": OPERATOR,
    },
    "changes.changerequest": {
        "view": ANY_ROLE,
        "add": NOBODY,
        "change": NOBODY,
        "delete": NOBODY,
        "delete_selected": NOBODY,
        "changes_changerequest_approve": APPROVER,
        "changes_changerequest_reject": APPROVER,
        "changes_changerequest_cancel": EDITOR,
    },
    # Made with publish_at on the API, decided by the job; the action cancels each row its
    # author or an operator of its scope selected (others are told, and it stays).
    "changes.scheduledchange": {
        "view": ANY_ROLE,
        "add": NOBODY,
        "change": NOBODY,
        "delete": NOBODY,
        "delete_selected": NOBODY,
        "cancel_scheduled_changes": ANY_ROLE,
    },
    "audit.auditentry": {
        "view": ANY_ROLE,
        "add": NOBODY,
        "change": NOBODY,
        "delete": NOBODY,
        "delete_selected": NOBODY,
    },
    # Made through the same services as the API; never deleted (a scope's rows name them).
    "scopes.application": {
        "view": ANY_ROLE,
        "add": OPERATOR,
        "change": OPERATOR,
        "delete": NOBODY,
        "delete_selected": NOBODY,
        # A scope's page: read, in that scope (tests/test_scope_page.py).
        "scopes_scope": ANY_ROLE,
        # Promote the environment before's content (tests/test_promotion.py); a GET changes
        # nothing and leads back to the application's page.
        "scopes_promote": EDITOR,
    },
    # An environment's rules decide how many approvers a change needs: a superuser's.
    "scopes.environment": {
        "view": ANY_ROLE,
        "add": SUPERUSER,
        "change": SUPERUSER,
        "delete": NOBODY,
        "delete_selected": NOBODY,
    },
    # Made, changed and deleted through the API only (its answer holds the secret); the admin
    # lists them and their deliveries for an operator, who may send a test event or send again.
    "webhooks.webhookendpoint": {
        "view": OPERATOR,
        "add": NOBODY,
        "change": NOBODY,
        "delete": NOBODY,
        "delete_selected": NOBODY,
        "send_test_event": OPERATOR,
    },
    "webhooks.delivery": {
        "view": OPERATOR,
        "add": NOBODY,
        "change": NOBODY,
        "delete": NOBODY,
        "delete_selected": NOBODY,
        "send_again": OPERATOR,
    },
    # Read-only in simplejwt's own admin.
    "token_blacklist.outstandingtoken": {
        "view": SUPERUSER,
        "add": NOBODY,
        "change": NOBODY,
        "delete": NOBODY,
        "delete_selected": NOBODY,
    },
    "token_blacklist.blacklistedtoken": {
        "view": SUPERUSER,
        "add": SUPERUSER,
        "change": SUPERUSER,
        "delete": SUPERUSER,
        "delete_selected": SUPERUSER,
    },
}
STANDARD_PAGES = ("view", "add", "change", "delete")
# The admin actions offered on a list's selected rows, as opposed to pages.
LIST_ACTIONS = (
    "delete_selected",
    "rollback_to_version",
    "revoke_agents",
    "send_test_event",
    "send_again",
    "revoke_api_tokens",
    "cancel_scheduled_changes",
)


def allowed(rule: str, holder: str) -> bool:
    if rule == NOBODY:
        return False
    if holder == SUPERUSER:
        return True
    if holder == "none" or rule == SUPERUSER:
        return False
    return rule in (ANY_ROLE, holder)


def make_user(holder: str, email: str | None = None) -> User:
    email = email or f"{holder}@example.com"
    if holder == SUPERUSER:
        return User.objects.create_superuser(email=email, password=None)
    user = User.objects.create_user(email=email, password=None)
    set_roles(user, [] if holder == "none" else [holder])
    return User.objects.get(pk=user.pk)


def url_map(patterns=None, prefix=""):
    """(name, view) of every route outside the admin."""
    for entry in patterns if patterns is not None else get_resolver().url_patterns:
        if isinstance(entry, URLResolver):
            if entry.app_name == "admin":
                continue
            yield from url_map(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield entry.name, entry.callback


def methods_of(callback) -> list[str]:
    cls = getattr(callback, "cls", None)
    if cls is None:
        return ["GET"]  # our plain Django views are all require_GET
    return [
        method.upper()
        for method in cls.http_method_names
        if method not in ("options", "head") and hasattr(cls, method)
    ]


# The URL map ------------------------------------------------------------------------------


def test_every_endpoint_of_the_url_map_has_a_rule():
    routes = {(name, method) for name, view in url_map() for method in methods_of(view)}
    assert None not in {name for name, _ in routes}, "every route needs a name"
    assert routes - set(API_RULES) == set(), "routes without a rule in API_RULES"
    assert set(API_RULES) - routes == set(), "rules for routes that no longer exist"


def test_the_views_enforce_the_rules_of_the_table():
    # The behaviour is shown below, per role; this ties each view's declaration to the table,
    # so a view cannot quietly move to a weaker role than docs/roles.md's.
    for name, view in url_map():
        cls = getattr(view, "cls", None)
        for method in methods_of(view):
            rule = API_RULES[(name, method)]
            if rule in (*ROLES, ANY_ROLE, SUPERUSER):
                assert cls.role_rules[method] == rule, (name, method)
            elif cls is not None and issubclass(cls, APIView):
                # Routes for agents, registration and the public: no role rule applies.
                assert "HasRole" not in [p.__name__ for p in cls.permission_classes], name


# Every endpoint governed by roles, per role --------------------------------------------------


@pytest.fixture
def world(publish):
    """Two versions, an agent, a token and a change request by someone else: something for
    every endpoint to act on."""
    publish(URL, 30)
    publish(URL, 45)
    token, _ = issue_registration_token()
    agent, _ = register_agent(token=token, name="victim")
    author = make_user(EDITOR, "author@example.com")
    # Another environment with a version, to promote from and compare with.
    qa = create_environment("qa", order=-5)
    publish_config(
        scope_id=Scope.objects.get(environment=qa).pk, config_url=URL + "/qa", pooling_interval=50
    )
    webhook, _ = create_endpoint(url="https://hooks.example/x", events=["*"])
    return {
        "agent": agent,
        "change": propose_change(author=author, pooling_interval=60),
        "webhook": webhook,
    }


def calls(world, user) -> dict:
    change = world["change"].pk
    webhook = world["webhook"].pk
    # Only its author cancels a request: the caller's own.
    own = ChangeRequest.objects.create(
        base_version=2, config_url=URL, pooling_interval=75, author=user
    ).pk
    # A token of the caller's own, in a role the caller holds (a superuser: any).
    # (None for an anonymous caller, who is refused before any token is looked up.)
    role = (roles_of(user) or [VIEWER])[0]
    token = (
        0
        if user is None
        else ApiToken.objects.create(
            name="own",
            user=user,
            role=role,
            token_hash=f"own-{user.pk}",
            expires_at=timezone.now() + timedelta(days=1),
        ).pk
    )
    scheduled = ScheduledChange.objects.create(
        scope=default_scope(),
        publish_at=timezone.now() + timedelta(hours=1),
        base_version=2,
        config_url=URL,
        pooling_interval=75,
        author=user,
    ).pk
    seed = {
        ("tokens", "GET"): ("get", "/tokens", None),
        ("tokens", "POST"): ("post", "/tokens", {"name": "ci", "role": role}),
        ("token", "DELETE"): ("delete", f"/tokens/{token}", None),
        ("config-admin", "GET"): ("get", "/config/admin", None),
        ("config-admin", "POST"): (
            "post",
            "/config/admin",
            {"config_url": URL + "/new", "pooling_interval": 60},
        ),
        ("config-admin", "PUT"): ("put", "/config/admin", {"pooling_interval": 90}),
        ("config-history", "GET"): ("get", "/config/admin/history", None),
        ("config-rollback", "POST"): ("post", "/config/admin/rollback", {"version": 1}),
        ("config-promote", "POST"): ("post", "/config/admin/promote", {"from_environment": "qa"}),
        ("application-compare", "GET"): (
            "get",
            "/apps/default/compare?from=qa&to=production",
            None,
        ),
        ("config-preflight", "POST"): (
            "post",
            "/config/admin/preflight",
            {"config_url": URL, "timeout_seconds": 1},
        ),
        ("registration-token", "GET"): ("get", "/agent/admin", None),
        ("registration-token", "POST"): ("post", "/agent/admin", {"labels": {"ring": "main"}}),
        ("agent", "PATCH"): ("patch", f"/agents/{world['agent'].pk}", {"labels": {"ring": "c"}}),
        ("agents", "GET"): ("get", "/agents", None),
        ("agent-revoke", "POST"): ("post", f"/agents/{world['agent'].pk}/revoke", None),
        ("audit", "GET"): ("get", "/audit", None),
        ("applications", "GET"): ("get", "/apps", None),
        ("applications", "POST"): ("post", "/apps", {"name": "payments"}),
        ("application", "GET"): ("get", "/apps/default", None),
        ("application", "PATCH"): ("patch", "/apps/default", {"description": "Edge"}),
        ("environments", "GET"): ("get", "/envs", None),
        ("environments", "POST"): ("post", "/envs", {"name": "staging"}),
        ("environment", "GET"): ("get", "/envs/production", None),
        ("environment", "PATCH"): ("patch", "/envs/production", {"approvals_required": 3}),
        ("rollout", "GET"): ("get", "/config/admin/rollout", None),
        ("rollout-promote", "POST"): ("post", "/config/admin/rollout/promote", None),
        ("rollout-pause", "POST"): ("post", "/config/admin/rollout/pause", None),
        ("rollout-resume", "POST"): ("post", "/config/admin/rollout/resume", None),
        ("rollout-abort", "POST"): ("post", "/config/admin/rollout/abort", None),
        ("changes", "GET"): ("get", "/config/admin/changes", None),
        ("change", "GET"): ("get", f"/config/admin/changes/{change}", None),
        ("change-approve", "POST"): ("post", f"/config/admin/changes/{change}/approve", {}),
        ("change-reject", "POST"): ("post", f"/config/admin/changes/{change}/reject", {}),
        ("change-cancel", "POST"): ("post", f"/config/admin/changes/{own}/cancel", {}),
        ("webhooks", "GET"): ("get", "/webhooks", None),
        ("webhooks", "POST"): (
            "post",
            "/webhooks",
            {"url": "https://hooks.example/new", "events": ["config.published"]},
        ),
        ("webhook", "GET"): ("get", f"/webhooks/{webhook}", None),
        ("webhook", "PATCH"): ("patch", f"/webhooks/{webhook}", {"description": "chat"}),
        ("webhook", "DELETE"): ("delete", f"/webhooks/{webhook}", None),
        ("webhook-rotate-secret", "POST"): ("post", f"/webhooks/{webhook}/rotate-secret", None),
        ("webhook-test", "POST"): ("post", f"/webhooks/{webhook}/test", None),
        ("scheduled-changes", "GET"): ("get", "/config/admin/scheduled", None),
        ("scheduled-change", "GET"): ("get", f"/config/admin/scheduled/{scheduled}", None),
        ("scheduled-change-cancel", "POST"): (
            "post",
            f"/config/admin/scheduled/{scheduled}/cancel",
            {},
        ),
    }
    # The twins act on the default scope too, the world's.
    twins = {
        (f"scoped-{name}", method): (verb, SCOPE_PREFIX + path, body)
        for (name, method), (verb, path, body) in seed.items()
        if (f"scoped-{name}", method) in API_RULES
    }
    return {**seed, **twins}


def start_rollout(state: str = Rollout.ROLLING) -> Rollout:
    """Version 3 rolling out in waves (the rollout endpoints need one), in `state`."""
    from apps.configs.actions import publish_config

    publish_config(config_url=URL + "/staged", pooling_interval=30, rollout={"waves": [50, 100]})
    Rollout.objects.filter(version=3).update(state=state)
    return Rollout.objects.get(version=3)


ROLE_GOVERNED = sorted(
    key for key, rule in API_RULES.items() if rule in (*ROLES, ANY_ROLE, SUPERUSER)
)


def stored_state() -> tuple:
    return (
        list(ConfigVersion.objects.values_list("version", "config_url", "pooling_interval")),
        RegistrationToken.objects.count(),
        Agent.objects.filter(revoked_at__isnull=False).count(),
        list(Agent.objects.values_list("labels", flat=True)),
        list(Rollout.objects.values_list("version", "state", "wave")),
        list(ChangeRequest.objects.order_by("id").values_list("id", "state")),
        list(ScheduledChange.objects.order_by("id").values_list("id", "state")),
        Approval.objects.count(),
        list(Application.objects.values_list("name", "description")),
        list(Environment.objects.values_list("name", "approvals_required")),
        list(ApiToken.objects.order_by("id").values_list("id", "revoked_at")),
        list(WebhookEndpoint.objects.values_list("url", "description", "secret")),
        Delivery.objects.count(),
    )


@pytest.mark.parametrize("holder", HOLDERS)
@pytest.mark.parametrize("endpoint", ROLE_GOVERNED, ids=lambda key: f"{key[1]} {key[0]}")
def test_each_role_may_call_exactly_the_endpoints_its_rule_allows(world, endpoint, holder):
    user = make_user(holder)
    method, path, body = calls(world, user)[endpoint]
    rule = API_RULES[endpoint]
    route = endpoint[0].removeprefix("scoped-")
    if route.startswith("rollout"):
        start_rollout(Rollout.PAUSED if route == "rollout-resume" else Rollout.ROLLING)
    before = stored_state()
    answer = getattr(api_as(user), method)(path, body, format="json")
    if allowed(rule, holder):
        assert answer.status_code in (200, 201, 202, 204), answer.content
        if route == "config-preflight":
            # A pre-flight asks the agents and stores nothing.
            assert stored_state() == before
        elif method != "get" or route == "registration-token":
            assert stored_state() != before
    else:
        assert answer.status_code == 403, answer.content
        assert answer.json() == {
            "detail": {
                ANY_ROLE: "This needs one of the roles viewer, editor, approver, operator.",
                SUPERUSER: "Only a superuser may do this.",
            }.get(rule, f"This needs the {rule} role."),
            "required_role": rule,
        }
        assert stored_state() == before


@pytest.mark.parametrize("endpoint", ["/config/version", "/config/agent", "/agent/heartbeat"])
def test_a_users_jwt_is_no_agent_credential(world, endpoint):
    client = api_as(make_user(SUPERUSER))
    answer = client.post(endpoint, {}, format="json") if "heartbeat" in endpoint else None
    answer = answer or client.get(endpoint)
    assert answer.status_code == 401


def test_anonymous_callers_are_asked_to_log_in_not_told_a_role(world):
    for key in ROLE_GOVERNED:
        method, path, body = calls(world, None)[key]
        assert getattr(APIClient(), method)(path, body, format="json").status_code == 401


def test_roles_count_from_the_next_request_without_a_new_login(world):
    user = make_user("none")
    client = api_as(user)
    assert client.get("/config/admin").status_code == 403
    set_roles(user, [VIEWER])
    assert client.get("/config/admin").status_code == 200
    set_roles(user, [])
    assert client.get("/config/admin").status_code == 403


def test_an_inactive_user_with_roles_may_do_nothing(world):
    user = make_user(OPERATOR)
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert api_as(user).get("/config/admin").status_code == 401


# Login answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "superuser", "expected"),
    [
        ([], False, []),
        ([VIEWER], False, [VIEWER]),
        ([OPERATOR, EDITOR], False, [EDITOR, OPERATOR]),
        ([], True, list(ROLES)),
    ],
)
def test_login_tells_the_client_its_roles(api, roles, superuser, expected):
    user = User.objects.create_user(
        email="someone@example.com", password="Long-Pass-7!", is_superuser=superuser
    )
    set_roles(user, roles)
    answer = api.post(
        "/login", {"email": "someone@example.com", "password": "Long-Pass-7!"}, format="json"
    )
    assert answer.status_code == 200, answer.content
    assert answer.json()["roles"] == expected
    assert answer.json()["superuser"] is superuser


# Roles themselves ---------------------------------------------------------------------------


def test_the_migration_makes_the_groups_and_gives_former_staff_every_role():
    # Run again here: a test database flushed by an earlier transactional test has lost them.
    migration = importlib.import_module("apps.accounts.migrations.0002_roles")
    staff = User.objects.create_user(email="staff@example.com", password=None, is_staff=True)
    plain = User.objects.create_user(email="plain@example.com", password=None)
    root = User.objects.create_superuser(email="root@example.com", password=None)
    migration.create_roles(django_apps, None)
    assert set(Group.objects.values_list("name", flat=True)) >= set(ROLES)
    assert set(staff.groups.values_list("name", flat=True)) == set(ROLES)
    assert not plain.groups.exists() and not root.groups.exists()


def test_set_roles_is_audited_and_gives_admin_access_with_a_role(admin_user):
    user = User.objects.create_user(email="ed@example.com", password=None)
    assert not user.is_staff
    added, removed = set_roles(user, [EDITOR, APPROVER], acting_user=admin_user)
    assert (added, removed) == ([EDITOR, APPROVER], [])
    user.refresh_from_db()
    assert user.is_staff
    entry = AuditEntry.objects.get(action=AuditEntry.ROLES_CHANGED)
    assert entry.actor == admin_user.email
    assert entry.target == "user ed@example.com"
    assert entry.detail == {"added": [EDITOR, APPROVER], "removed": [], "roles": [EDITOR, APPROVER]}
    assert set_roles(user, [EDITOR, APPROVER]) == ([], [])
    assert AuditEntry.objects.filter(action=AuditEntry.ROLES_CHANGED).count() == 1
    set_roles(user, [])
    user.refresh_from_db()
    assert not user.is_staff
    assert not has_role(user, EDITOR)


# grant_role ---------------------------------------------------------------------------------


def test_grant_role_adds_a_role_and_none_takes_every_role_away(capsys):
    user = User.objects.create_user(email="op@example.com", password=None)
    call_command("grant_role", "OP@example.com", OPERATOR)
    call_command("grant_role", "op@example.com", VIEWER)
    assert "op@example.com: viewer, operator" in capsys.readouterr().out
    assert set(user.groups.values_list("name", flat=True)) == {OPERATOR, VIEWER}
    entries = AuditEntry.objects.filter(action=AuditEntry.ROLES_CHANGED).order_by("id")
    assert [(e.actor, e.detail["added"]) for e in entries] == [
        ("system", [OPERATOR]),
        ("system", [VIEWER]),
    ]
    call_command("grant_role", "op@example.com", "none")
    assert "op@example.com: no role" in capsys.readouterr().out
    assert not user.groups.exists()
    user.refresh_from_db()
    assert not user.is_staff


def test_grant_role_creates_the_user_when_asked(api, capsys):
    call_command("grant_role", "new@example.com", EDITOR, "--create", "--password", "Long-Pass-7!")
    assert "Created user new@example.com." in capsys.readouterr().out
    answer = api.post(
        "/login", {"email": "new@example.com", "password": "Long-Pass-7!"}, format="json"
    )
    assert answer.json()["roles"] == [EDITOR]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ghost@example.com", EDITOR], "No user ghost@example.com; add --create"),
        (["ghost@example.com", EDITOR, "--create"], "--create needs --password"),
        (["ghost@example.com", EDITOR, "--create", "--password", "short"], "too short"),
        (["ghost@example.com", EDITOR, "--password", "Long-Pass-7!"], "only used with --create"),
    ],
)
def test_grant_role_refuses_bad_usage_and_stores_nothing(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("grant_role", *args)
    assert not User.objects.filter(email="ghost@example.com").exists()
    assert not AuditEntry.objects.filter(action=AuditEntry.ROLES_CHANGED).exists()


def test_grant_role_refuses_an_unknown_role():
    User.objects.create_user(email="x@example.com", password=None)
    with pytest.raises(CommandError, match="invalid choice: 'admin'"):
        call_command("grant_role", "x@example.com", "admin")


# The admin ----------------------------------------------------------------------------------


def registered_admin_rules() -> dict[str, set[str]]:
    """Every page and action the admin offers, by model."""
    found = {}
    standard = {"changelist", "add", "history", "delete", "change"}
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label_lower
        prefix = f"{model._meta.app_label}_{model._meta.model_name}_"
        own_urls = {
            url.name
            for url in model_admin.get_urls()
            if url.name and url.name.removeprefix(prefix) not in standard
        }
        actions = {name for _, name, _ in model_admin._get_base_actions()}
        found[label] = {*STANDARD_PAGES, *own_urls, *actions}
    return found


def test_every_admin_page_and_action_has_a_rule():
    assert {label: set(rules) for label, rules in ADMIN_RULES.items()} == registered_admin_rules()


@pytest.fixture
def admin_objects(world, admin_user):
    """One object of every registered model, to open its pages."""
    from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

    issue_tokens(admin_user).blacklist()
    _, record = issue_registration_token()
    return {
        "accounts.user": admin_user,
        "accounts.scopedrole": ScopedRole.objects.create(
            user=admin_user, role=VIEWER, environment=Environment.objects.get(name="production")
        ),
        "configs.configversion": ConfigVersion.objects.get(
            version=1, scope__environment__name="production"
        ),
        "agents.agent": world["agent"],
        "agents.registrationtoken": record,
        "accounts.apitoken": ApiToken.objects.create(
            name="ci",
            user=admin_user,
            role=VIEWER,
            token_hash="admin-page",
            expires_at=timezone.now() + timedelta(days=1),
        ),
        "audit.auditentry": AuditEntry.objects.first(),
        # A record of a rollout, made directly: publishing one would make the change stale.
        "rollouts.rollout": Rollout.objects.create(
            version=2, previous_version=1, waves=[100], state=Rollout.COMPLETED
        ),
        "changes.changerequest": world["change"],
        "changes.scheduledchange": ScheduledChange.objects.create(
            scope=default_scope(),
            publish_at=timezone.now() + timedelta(hours=1),
            base_version=2,
            config_url=URL,
            pooling_interval=75,
        ),
        "scopes.application": Application.objects.get(name="default"),
        "scopes.environment": Environment.objects.get(name="production"),
        "webhooks.webhookendpoint": world["webhook"],
        "webhooks.delivery": send_test_event(world["webhook"]),
        "token_blacklist.outstandingtoken": OutstandingToken.objects.first(),
        "token_blacklist.blacklistedtoken": BlacklistedToken.objects.first(),
    }


def admin_path(label: str, page: str, obj=None) -> str:
    app, model = label.split(".")
    base = f"/admin/{app}/{model}/"
    return {
        "view": base,
        "add": f"{base}add/",
        "change": f"{base}{obj.pk}/change/",
        "delete": f"{base}{obj.pk}/delete/",
        "auth_user_password_change": f"{base}{obj.pk}/password/",
        "configs_configversion_change_config": f"{base}change-config/",
        "agents_registrationtoken_issue": f"{base}issue/",
        "accounts_apitoken_issue": f"{base}issue/",
        "rollouts_rollout_control": f"{base}{obj.pk}/control/pause/",
        "changes_changerequest_approve": f"{base}{obj.pk}/approve/",
        "changes_changerequest_reject": f"{base}{obj.pk}/reject/",
        "changes_changerequest_cancel": f"{base}{obj.pk}/cancel/",
        "scopes_scope": f"{base}{obj}/envs/production/",
        "scopes_promote": f"{base}{obj}/envs/production/promote/",
    }[page]


def refused_by_the_admin(answer, holder: str) -> bool:
    if holder == "none":
        # Without a role a user is not staff: the admin sends them to its login page.
        return answer.status_code == 302 and "/admin/login/" in answer["Location"]
    return answer.status_code == 403


@pytest.mark.parametrize("holder", HOLDERS)
@pytest.mark.parametrize("label", sorted(ADMIN_RULES))
def test_each_role_sees_exactly_the_admin_pages_its_rule_allows(
    client, admin_objects, label, holder
):
    client.force_login(make_user(holder))
    obj = admin_objects[label]
    for page, rule in ADMIN_RULES[label].items():
        if page in LIST_ACTIONS:
            continue  # actions: below
        path = admin_path(label, page, obj)
        answer = client.post(path, {}) if page == "change" else client.get(path)
        if allowed(rule, holder):
            # A POST to a change page saves and redirects, or shows the form's errors.
            assert answer.status_code in (200, 302), (page, answer.status_code)
            assert "/admin/login/" not in answer.get("Location", ""), page
        else:
            assert refused_by_the_admin(answer, holder), (page, answer.status_code)


ACTIONS = [
    (label, action)
    for label, rules in sorted(ADMIN_RULES.items())
    for action in rules
    if action in LIST_ACTIONS
]


@pytest.mark.parametrize("holder", HOLDERS)
@pytest.mark.parametrize(("label", "action"), ACTIONS, ids=lambda v: str(v))
def test_each_role_is_offered_exactly_the_admin_actions_its_rule_allows(
    client, admin_objects, label, action, holder
):
    client.force_login(make_user(holder))
    app, model = label.split(".")
    listing = client.get(f"/admin/{app}/{model}/")
    rule = ADMIN_RULES[label][action]
    if not allowed(ADMIN_RULES[label]["view"], holder):
        # No list, so no action: the list itself is refused.
        assert not allowed(rule, holder)
        assert refused_by_the_admin(listing, holder)
        return
    form = listing.context["action_form"]  # None when no action is offered at all
    offered = [name for name, _ in form.fields["action"].choices] if form else []
    assert (action in offered) is allowed(rule, holder), offered


@pytest.mark.parametrize("holder", HOLDERS)
def test_an_action_that_is_not_offered_changes_nothing_when_posted(client, world, holder):
    client.force_login(make_user(holder))
    agent = world["agent"]
    before = stored_state()
    client.post(
        "/admin/agents/agent/",
        {"action": "revoke_agents", "_selected_action": [agent.pk], "confirmed": "yes"},
    )
    client.post(
        "/admin/configs/configversion/",
        {
            "action": "rollback_to_version",
            "_selected_action": [
                ConfigVersion.objects.get(version=1, scope__environment__name="production").pk
            ],
            "confirmed": "yes",
        },
    )
    if allowed(OPERATOR, holder):
        assert Agent.objects.get(pk=agent.pk).revoked_at is not None
        assert ConfigVersion.objects.order_by("-version").first().pooling_interval == 30
    else:
        assert stored_state() == before


def test_the_admin_user_page_assigns_roles_through_the_audited_service(client, admin_user):
    client.force_login(admin_user)
    user = User.objects.create_user(email="ed@example.com", password=None)
    page = client.get(f"/admin/accounts/user/{user.pk}/change/")
    assert page.status_code == 200
    assert 'name="roles"' in page.content.decode()
    answer = client.post(
        f"/admin/accounts/user/{user.pk}/change/",
        {"email": "ed@example.com", "roles": [EDITOR, APPROVER], "is_active": "on"},
        REMOTE_ADDR="192.0.2.9",
    )
    assert answer.status_code == 302, answer.content
    user.refresh_from_db()
    assert set(user.groups.values_list("name", flat=True)) == {EDITOR, APPROVER}
    assert user.is_staff
    entry = AuditEntry.objects.get(action=AuditEntry.ROLES_CHANGED)
    assert (entry.actor, entry.source_ip) == (admin_user.email, "192.0.2.9")
    page = client.get(f"/admin/accounts/user/{user.pk}/change/")
    assert page.context["adminform"].form.initial["roles"] == [EDITOR, APPROVER]
    listing = client.get("/admin/accounts/user/").content.decode()
    assert "editor, approver" in listing


def test_the_dashboard_offers_only_the_buttons_of_the_users_roles(client, world):
    viewer = make_user(VIEWER)
    client.force_login(viewer)
    html = client.get("/admin/").content.decode()
    assert "Change configuration" not in html
    assert "Issue registration token" not in html
    assert "Your roles: viewer." in html
    client.force_login(make_user(EDITOR))
    html = client.get("/admin/").content.decode()
    assert "Change configuration" in html
    assert "Issue registration token" not in html


def test_the_admins_403_names_the_role_needed_and_lists_the_roles(client, world):
    client.force_login(make_user(VIEWER))
    for path, role in (
        ("/admin/configs/configversion/change-config/", EDITOR),
        ("/admin/agents/registrationtoken/issue/", OPERATOR),
    ):
        answer = client.get(path)
        assert answer.status_code == 403
        html = answer.content.decode()
        assert f'<p id="forbidden-reason">This needs the {role} role.</p>' in html
        assert "<td>approver</td><td>approve or reject change requests" in html
    answer = client.get("/admin/accounts/user/")
    assert answer.status_code == 403
    assert "Your roles do not allow this page." in answer.content.decode()
