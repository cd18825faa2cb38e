"""The admin acts per scope and obeys the scoped roles: the change form of a scope, the rollback of
a scope's version, registration tokens of a scope, revocations and change-request decisions, each
allowed to a role held in that scope and refused (with nothing stored) elsewhere."""

import pytest

from apps.accounts.roles import APPROVER, EDITOR, OPERATOR
from apps.agents.models import Agent, RegistrationToken
from apps.agents.services import issue_registration_token, register_agent
from apps.changes.models import ChangeRequest
from apps.changes.services import propose_change
from apps.configs.actions import publish_config
from apps.configs.models import ConfigVersion
from apps.scopes.models import Environment
from apps.scopes.services import default_scope
from tests.support.scopes import make_two_by_two, user_with

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/a"
CHANGE_FORM = "/admin/configs/configversion/change-config/"
VERSIONS = "/admin/configs/configversion/"
AGENTS = "/admin/agents/agent/"
ISSUE = "/admin/agents/registrationtoken/issue/"


@pytest.fixture
def scopes():
    """payments and search in staging and production, each on its version 1."""
    found = make_two_by_two()
    for scope in found.values():
        publish_config(scope_id=scope.pk, config_url=f"{URL}/{scope.pk}", pooling_interval=30)
    return found


def roll_back(client, version: ConfigVersion):
    """The admin's rollback action on `version`, confirmed."""
    return client.post(
        VERSIONS,
        {"action": "rollback_to_version", "_selected_action": [version.pk], "confirmed": "yes"},
        follow=True,
    )


def versions_of(scope) -> list[int]:
    return sorted(ConfigVersion.objects.filter(scope=scope).values_list("version", flat=True))


def test_an_editor_of_a_scope_changes_its_configuration_in_the_admin_and_nowhere_else(
    client, scopes
):
    payments, search = scopes[("payments", "staging")], scopes[("search", "staging")]
    client.force_login(user_with(EDITOR, "payments", "staging"))

    # The scope's versions (the matrix's link) lead to the scope's change form.
    listed = client.get(f"{VERSIONS}?scope__id__exact={payments.pk}").content.decode()
    assert f'{CHANGE_FORM}?scope={payments.pk}"' in listed
    page = client.get(f"{CHANGE_FORM}?scope={payments.pk}")
    assert page.status_code == 200
    assert "Change the configuration of payments/staging" in page.content.decode()
    done = client.post(
        f"{CHANGE_FORM}?scope={payments.pk}", {"config_url": URL + "/new", "pooling_interval": 60}
    )
    assert done.status_code == 302
    assert done["Location"].endswith(f"?scope__id__exact={payments.pk}")
    assert versions_of(payments) == [1, 2]
    assert ConfigVersion.objects.get(scope=payments, version=2).config_url == URL + "/new"

    for elsewhere in (f"?scope={search.pk}", ""):
        refused = client.post(
            f"{CHANGE_FORM}{elsewhere}", {"config_url": URL + "/x", "pooling_interval": 60}
        )
        assert refused.status_code == 403
    assert versions_of(search) == [1]
    assert not ConfigVersion.objects.filter(scope=default_scope()).exists()
    assert client.get(f"{CHANGE_FORM}?scope=999999").status_code == 404
    assert client.get(f"{CHANGE_FORM}?scope=x").status_code == 404


def test_a_rollback_in_the_admin_needs_the_operator_role_in_the_version_s_scope(client, scopes):
    payments, search = scopes[("payments", "production")], scopes[("search", "production")]
    for scope in (payments, search):
        publish_config(scope_id=scope.pk, config_url=URL + "/2", pooling_interval=30)
    client.force_login(user_with(OPERATOR, "payments"))
    refused = roll_back(client, ConfigVersion.objects.get(scope=search, version=1))
    assert "in search/production: nothing was rolled back" in refused.content.decode()
    assert versions_of(search) == [1, 2]

    done = roll_back(client, ConfigVersion.objects.get(scope=payments, version=1))
    assert "Rolled back: version 3" in done.content.decode()
    assert versions_of(payments) == [1, 2, 3]
    assert ConfigVersion.objects.get(scope=payments, version=3).rolled_back_from == 1


def test_an_operator_of_a_scope_issues_its_tokens_and_revokes_its_agents_only(client, scopes):
    payments, search = scopes[("payments", "staging")], scopes[("search", "staging")]
    client.force_login(user_with(OPERATOR, "payments", "staging"))

    issued = client.post(ISSUE, {"ttl": 3600, "labels": "", "scope": payments.pk})
    assert issued.status_code == 200
    assert RegistrationToken.objects.get().scope == payments
    refused = client.post(ISSUE, {"ttl": 3600, "labels": "", "scope": search.pk})
    assert refused.status_code == 403
    assert RegistrationToken.objects.count() == 1

    agents = {}
    for scope in (payments, search):
        token, _ = issue_registration_token(scope_id=scope.pk)
        agents[scope.pk], _ = register_agent(token=token, name=str(scope))
    both = [agents[payments.pk].pk, agents[search.pk].pk]
    answer = client.post(
        AGENTS,
        {"action": "revoke_agents", "_selected_action": both, "confirmed": "yes"},
        follow=True,
    )
    assert "in search/staging: nothing was revoked" in answer.content.decode()
    assert not Agent.objects.filter(revoked_at__isnull=False).exists()
    client.post(
        AGENTS,
        {
            "action": "revoke_agents",
            "_selected_action": [agents[payments.pk].pk],
            "confirmed": "yes",
        },
    )
    assert list(Agent.objects.filter(revoked_at__isnull=False)) == [agents[payments.pk]]


def test_a_change_request_is_decided_in_the_admin_by_an_approver_of_its_scope(client, scopes):
    Environment.objects.filter(name="production").update(approvals_required=1)
    payments = scopes[("payments", "production")]
    author = user_with(EDITOR, "payments")
    change = propose_change(scope_id=payments.pk, author=author, pooling_interval=90)
    approve = f"/admin/changes/changerequest/{change.pk}/approve/"

    client.force_login(user_with(APPROVER, None, "staging"))
    assert client.post(approve, {"comment": ""}).status_code == 403
    assert ChangeRequest.objects.get(pk=change.pk).state == ChangeRequest.PENDING

    client.force_login(user_with(APPROVER, None, "production"))
    page = client.get(f"/admin/changes/changerequest/{change.pk}/change/").content.decode()
    assert 'id="approve-form"' in page
    client.post(approve, {"comment": "fine"})
    change.refresh_from_db()
    assert (change.state, change.published_version) == (ChangeRequest.PUBLISHED, 2)
    assert ConfigVersion.objects.get(scope=payments, version=2).pooling_interval == 90
