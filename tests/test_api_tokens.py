"""API tokens for pipelines: made once and shown once, stored as a hash, never more than their
user holds, named in the audit log, and refused wherever an API token does not belong."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.accounts.models import ApiToken, User
from apps.accounts.services import take_scoped_roles
from apps.audit.models import AuditEntry
from apps.configs.models import ConfigVersion
from controller_site.tokens import hash_token
from tests.support.clients import api_as, bearer
from tests.support.scopes import make_two_by_two, user_with

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/a"
STAGING = "/apps/payments/envs/staging"
PRODUCTION = "/apps/payments/envs/production"


@pytest.fixture
def fleet():
    scopes = make_two_by_two()
    root = User.objects.create_user(email="root@example.com", is_superuser=True)
    for application, environment in scopes:
        api_as(root).post(
            f"/apps/{application}/envs/{environment}/config/admin",
            {"config_url": URL, "pooling_interval": 30},
            "json",
        )
    return scopes


def issue(client, **body):
    return client.post("/tokens", {"name": "deploy", "role": "editor", **body}, "json")


def test_a_token_is_answered_once_and_stored_only_as_its_hash(fleet):
    editor = user_with("editor", "payments", "staging")
    made = issue(api_as(editor), application="payments", environment="staging")
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["token"].startswith("dcs_")
    assert (body["name"], body["role"], body["user"]) == ("deploy", "editor", editor.email)
    assert (body["application"], body["environment"]) == ("payments", "staging")
    stored = ApiToken.objects.get()
    assert stored.token_hash == hash_token(body["token"])
    assert body["token"] not in str(ApiToken.objects.values().get())
    # Listed without its secret; 90 days by default.
    listed = api_as(editor).get("/tokens").json()
    assert [token["id"] for token in listed] == [body["id"]] and "token" not in listed[0]
    assert timedelta(days=89) < stored.expires_at - timezone.now() <= timedelta(days=90)
    entry = AuditEntry.objects.get(action=AuditEntry.API_TOKEN_ISSUED)
    assert entry.actor == editor.email and entry.detail["scope"] == "payments/staging"


def test_a_scoped_token_acts_in_its_scope_only_and_the_audit_names_it(fleet):
    editor = user_with("editor", "payments", "staging")
    secret = issue(api_as(editor), application="payments", environment="staging").json()["token"]
    pipeline = bearer(secret)
    changed = pipeline.put(f"{STAGING}/config/admin", {"pooling_interval": 45}, "json")
    assert changed.status_code == 200, changed.content
    refused = pipeline.put(f"{PRODUCTION}/config/admin", {"pooling_interval": 45}, "json")
    assert refused.status_code == 403
    assert refused.json()["required_role"] == "editor"
    assert pipeline.get(f"{STAGING}/config/admin").status_code == 200
    versions = ConfigVersion.objects.filter(scope__application__name="payments")
    assert sorted(versions.values_list("scope__environment__name", "version")) == [
        ("production", 1),
        ("staging", 1),
        ("staging", 2),
    ]
    entry = AuditEntry.objects.get(action=AuditEntry.CONFIG_UPDATED)
    assert entry.actor == f"token deploy of {editor.email}"
    assert ApiToken.objects.get().last_used_at is not None


def test_a_superuser_s_token_holds_its_role_only(fleet):
    root = User.objects.get(email="root@example.com")
    secret = issue(api_as(root), role="viewer").json()["token"]
    pipeline = bearer(secret)
    assert pipeline.get(f"{PRODUCTION}/config/admin").status_code == 200
    assert (
        pipeline.put(f"{PRODUCTION}/config/admin", {"pooling_interval": 9}, "json").status_code
        == 403
    )
    # Superuser-only routes are closed to it too.
    assert pipeline.post("/envs", {"name": "dev"}, "json").status_code == 403
    assert User.objects.get(pk=root.pk).is_superuser


def test_a_token_never_has_more_than_its_creator(fleet):
    editor = user_with("editor", "payments", "staging")
    client = api_as(editor)
    for body in (
        {"role": "operator", "application": "payments", "environment": "staging"},
        {"application": "payments", "environment": "production"},
        {"application": "payments"},
        {},
    ):
        before = ApiToken.objects.count()
        refused = issue(client, **body)
        assert refused.status_code == 403, body
        assert "does not hold the" in refused.json()["detail"]
        assert ApiToken.objects.count() == before
    # Nor for someone else, unless a superuser makes it.
    other = user_with("editor", "search", "staging")
    assert issue(client, user=other.email, application="payments").status_code == 403
    root = User.objects.get(email="root@example.com")
    made = issue(api_as(root), user=other.email, application="search", environment="staging")
    assert made.status_code == 201 and made.json()["user"] == other.email


@pytest.mark.parametrize(
    "body, field",
    [
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": (timezone.now() + timedelta(days=366)).isoformat()}, "expires_at"),
        ({"role": "king"}, "role"),
        ({"name": ""}, "name"),
        ({"application": "nope"}, "application"),
        ({"environment": "nope"}, "environment"),
    ],
)
def test_bad_requests_are_400_and_store_nothing(fleet, body, field):
    root = User.objects.get(email="root@example.com")
    refused = issue(api_as(root), **body)
    assert refused.status_code == 400 and field in refused.json(), refused.content
    assert not ApiToken.objects.exists()


def test_a_revoked_an_expired_or_an_outranked_token_is_refused_at_once(fleet):
    editor = user_with("editor", "payments", "staging")
    owner = api_as(editor)

    def make() -> tuple[int, str]:
        body = issue(owner, application="payments", environment="staging").json()
        return body["id"], body["token"]

    token_id, secret = make()
    assert bearer(secret).get("/tokens/x").status_code == 404  # authenticated: no such route
    assert owner.delete(f"/tokens/{token_id}").status_code == 204
    refused = bearer(secret).get(f"{STAGING}/config/admin")
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert AuditEntry.objects.filter(action=AuditEntry.API_TOKEN_REVOKED).count() == 1

    token_id, secret = make()
    ApiToken.objects.filter(pk=token_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert bearer(secret).get(f"{STAGING}/config/admin").status_code == 401

    token_id, secret = make()
    scope = fleet[("payments", "staging")]
    take_scoped_roles(editor, application=scope.application, environment=scope.environment)
    assert bearer(secret).get(f"{STAGING}/config/admin").status_code == 401
    assert bearer("dcs_" + "x" * 43).get(f"{STAGING}/config/admin").status_code == 401


def test_someone_else_s_token_cannot_be_revoked_and_tokens_cannot_manage_tokens(fleet):
    editor = user_with("editor", "payments", "staging")
    made = issue(api_as(editor), application="payments", environment="staging").json()
    other = user_with("editor", "search", "staging")
    assert api_as(other).delete(f"/tokens/{made['id']}").status_code == 404
    assert api_as(other).get("/tokens").json() == []
    pipeline = bearer(made["token"])
    assert pipeline.get("/tokens").status_code == 403
    assert issue(pipeline, application="payments", environment="staging").status_code == 403
    assert pipeline.delete(f"/tokens/{made['id']}").status_code == 403
    assert ApiToken.objects.get().revoked_at is None


def test_a_token_is_refused_on_the_admin_site_and_on_the_agents_routes(fleet, client):
    root = User.objects.get(email="root@example.com")
    secret = issue(api_as(root), role="operator").json()["token"]
    admin_page = client.get("/admin/", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert admin_page.status_code == 302 and "/admin/login/" in admin_page["Location"]
    for path in ("/config/agent", "/agent/heartbeat"):
        method = bearer(secret).post if path == "/agent/heartbeat" else bearer(secret).get
        answer = (
            method(path, {"version": 1}, "json") if path == "/agent/heartbeat" else method(path)
        )
        assert answer.status_code == 401, path


def test_the_admin_makes_a_token_shows_it_once_and_revokes_it(fleet, client):
    editor = user_with("editor", "payments", "staging")
    other = user_with("editor", "search", "staging")
    client.force_login(editor)
    scope = fleet[("payments", "staging")]
    refused = client.post(
        "/admin/accounts/apitoken/issue/",
        {"name": "ci", "role": "operator", "application": scope.application_id},
    )
    assert refused.status_code == 200 and b"does not hold the operator role" in refused.content
    assert not ApiToken.objects.exists()
    made = client.post(
        "/admin/accounts/apitoken/issue/",
        {
            "name": "ci",
            "role": "editor",
            "application": scope.application_id,
            "environment": scope.environment_id,
        },
    )
    secret = made.context["secret"]
    assert secret.startswith("dcs_") and secret.encode() in made.content
    token = ApiToken.objects.get()
    assert token.token_hash == hash_token(secret) and token.scope_label == "payments/staging"
    assert bearer(secret).get(f"{STAGING}/config/admin").status_code == 200
    # Someone else's list does not hold it, and their revoke action cannot reach it.
    client.force_login(other)
    listing = client.get("/admin/accounts/apitoken/")
    assert list(listing.context["cl"].result_list) == []
    client.post(
        "/admin/accounts/apitoken/",
        {"action": "revoke_api_tokens", "_selected_action": [token.pk]},
    )
    assert ApiToken.objects.get().revoked_at is None
    client.force_login(editor)
    assert list(client.get("/admin/accounts/apitoken/").context["cl"].result_list) == [token]
    client.post(
        "/admin/accounts/apitoken/",
        {"action": "revoke_api_tokens", "_selected_action": [token.pk]},
    )
    assert ApiToken.objects.get().revoked_at is not None
    assert bearer(secret).get(f"{STAGING}/config/admin").status_code == 401
