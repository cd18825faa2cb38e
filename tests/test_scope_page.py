"""Each scope's page in the admin: reached from the dashboard's matrix and the application's page,
it shows that scope's configuration, versions with what each changed, rollout, change requests
and agents, nothing of another scope, and it is read with a role held there."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.accounts.models import User
from apps.accounts.roles import EDITOR, OPERATOR, VIEWER
from apps.accounts.services import set_roles
from apps.agents.models import Agent
from apps.agents.services import issue_registration_token, register_agent
from apps.changes.models import ChangeRequest
from apps.changes.services import propose_change, reject_change
from apps.configs.actions import abort_rollout, publish_config
from apps.scopes.models import Environment
from tests.support.scopes import make_two_by_two, user_with

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/page"
PAGE = "/admin/scopes/application/{}/envs/{}/"


@pytest.fixture
def scopes():
    """payments and search in staging and production, each on a version 1 of its own URL."""
    found = make_two_by_two()
    for (application, environment), scope in found.items():
        publish_config(
            scope_id=scope.pk,
            config_url=f"{URL}/{application}-{environment}",
            pooling_interval=30,
        )
    return found


def page_of(client, application: str, environment: str):
    return client.get(PAGE.format(application, environment))


def make_agent(scope, name: str, **fields) -> Agent:
    token, _ = issue_registration_token(scope_id=scope.pk)
    agent, _ = register_agent(token=token, name=name)
    Agent.objects.filter(pk=agent.pk).update(**fields)
    return agent


def test_a_matrix_cell_and_the_application_s_page_lead_to_the_scope_s_page(admin_client, scopes):
    dashboard = admin_client.get("/admin/").content.decode()
    for application, environment in scopes:
        assert f'href="{PAGE.format(application, environment)}"' in dashboard
    payments = scopes[("payments", "staging")].application
    application_page = admin_client.get(f"/admin/scopes/application/{payments.pk}/change/")
    html = application_page.content.decode()
    assert f'href="{PAGE.format("payments", "staging")}"' in html
    assert f'href="{PAGE.format("payments", "production")}"' in html


def test_the_page_shows_its_scope_s_configuration_and_versions_with_their_diff(
    admin_client, scopes
):
    publish_config(
        scope_id=scopes[("payments", "staging")].pk, config_url=URL + "/new", pooling_interval=30
    )
    response = page_of(admin_client, "payments", "staging")
    assert response.status_code == 200
    html = response.content.decode()
    assert "payments in staging" in html
    assert '<td id="scope-current-version">2</td>' in html
    assert f'<td id="scope-config-url">{URL}/new</td>' in html
    assert '<td id="scope-interval">30 s</td>' in html
    # Version 2 changed the URL only, from version 1's to its own; version 1 set both.
    assert (
        f'<div class="diff-config_url">config_url: <del>{URL}/payments-staging</del> &rarr; '
        f"<ins>{URL}/new</ins></div>" in html
    )
    version_2 = html.split('id="scope-version-2"')[1].split("</tr>")[0]
    assert "diff-pooling_interval" not in version_2
    version_1 = html.split('id="scope-version-1"')[1].split("</tr>")[0]
    assert "diff-config_url" in version_1 and "diff-pooling_interval" in version_1
    # Nothing of the other scopes.
    for elsewhere in ("payments-production", "search-staging", "search-production"):
        assert f"{URL}/{elsewhere}" not in html


def test_unknown_names_are_404(admin_client, scopes):
    assert page_of(admin_client, "nosuch", "staging").status_code == 404
    assert page_of(admin_client, "payments", "nosuch").status_code == 404


def test_a_role_in_the_scope_reads_it_and_a_role_elsewhere_is_refused(client, scopes):
    client.force_login(user_with(VIEWER, "payments", "staging"))
    mine = page_of(client, "payments", "staging")
    assert mine.status_code == 200
    html = mine.content.decode()
    # A viewer reads; the buttons of the actions are not offered.
    for button in ("scope-change-config", "scope-issue-token"):
        assert f'id="{button}"' not in html
    refused = page_of(client, "payments", "production")
    assert refused.status_code == 403
    assert "in payments/production." in refused.content.decode()
    assert f"{URL}/payments-production" not in refused.content.decode()
    assert page_of(client, "search", "staging").status_code == 403

    client.force_login(user_with(VIEWER, None, "production"))
    assert page_of(client, "search", "production").status_code == 200
    assert page_of(client, "search", "staging").status_code == 403

    everywhere = User.objects.create_user(email="viewer@example.com")
    set_roles(everywhere, [VIEWER])
    client.force_login(everywhere)
    assert page_of(client, "search", "staging").status_code == 200


def test_the_action_buttons_follow_the_roles_held_in_the_scope(client, scopes):
    payments = scopes[("payments", "staging")]
    client.force_login(user_with(EDITOR, "payments", "staging"))
    html = page_of(client, "payments", "staging").content.decode()
    change_config = f"/admin/configs/configversion/change-config/?scope={payments.pk}"
    assert f'href="{change_config}"' in html
    assert 'id="scope-issue-token"' not in html
    # The button's form acts on this scope.
    assert (
        "Change the configuration of payments/staging" in client.get(change_config).content.decode()
    )

    client.force_login(user_with(OPERATOR, "payments", "staging"))
    html = page_of(client, "payments", "staging").content.decode()
    issue = f"/admin/agents/registrationtoken/issue/?scope={payments.pk}"
    assert f'href="{issue}"' in html
    assert 'id="scope-change-config"' not in html
    assert "All versions and rollback" in html
    # The token form has the scope chosen.
    form = client.get(issue).context["form"]
    assert form["scope"].value() == payments.pk


def test_the_page_shows_its_rollout_with_its_chart_and_the_operator_s_controls(client, scopes):
    payments = scopes[("payments", "production")]
    now = timezone.now()
    for name in ("a", "b", "c", "d"):
        make_agent(payments, name, applied_version=1, last_seen=now)
    publish_config(
        scope_id=payments.pk,
        config_url=URL + "/2",
        pooling_interval=30,
        rollout={"waves": [50, 100]},
    )

    client.force_login(user_with(OPERATOR, "payments", "production"))
    html = page_of(client, "payments", "production").content.decode()
    rollout = html.split('id="scope-rollout"')[1]
    assert "rolling" in rollout and "Version 2 replacing version 1; wave 1 of 2" in rollout
    assert 'id="rollout-chart"' in html and 'id="applied-line"' in html
    assert 'id="bar-applied"' in html and 'id="bar-not-yet-targeted"' in html
    assert 'class="wave-mark"' in html  # wave 1's start, from the audit log
    for control in ("promote", "pause", "abort"):
        assert f'id="control-{control}"' in html
    assert 'id="control-resume"' not in html

    client.force_login(user_with(VIEWER, "payments", "production"))
    html = page_of(client, "payments", "production").content.decode()
    assert 'id="rollout-chart"' in html
    assert 'id="control-pause"' not in html
    # Another scope of the application has no rollout.
    client.force_login(user_with(VIEWER, "payments"))
    html = page_of(client, "payments", "staging").content.decode()
    assert 'id="rollout-chart"' not in html and "No rollout here yet" in html


def test_change_requests_are_those_of_the_scope_pending_first(admin_client, scopes, admin_user):
    Environment.objects.filter(name="production").update(approvals_required=1)
    payments = scopes[("payments", "production")]
    author = user_with(EDITOR, "payments")
    first = propose_change(scope_id=payments.pk, author=author, pooling_interval=60)
    reject_change(first.pk, scope_id=payments.pk, approver=admin_user)
    second = propose_change(scope_id=payments.pk, author=author, pooling_interval=90)
    search = scopes[("search", "production")]
    elsewhere = propose_change(scope_id=search.pk, author=admin_user, pooling_interval=120)

    html = page_of(admin_client, "payments", "production").content.decode()
    changes = html.split('id="scope-changes"')[1].split("</table>")[0]
    assert changes.index(f"#{second.pk}<") < changes.index(f"#{first.pk}<")
    assert 'class="change-pending"' in changes and 'class="change-rejected"' in changes
    assert f"#{elsewhere.pk}<" not in changes
    assert ChangeRequest.objects.get(pk=second.pk).state == ChangeRequest.PENDING


def test_the_agents_by_status_and_a_bounded_list_needing_a_look_first(
    admin_client, scopes, monkeypatch
):
    payments = scopes[("payments", "staging")]
    now = timezone.now()
    make_agent(payments, "fresh-1", applied_version=1, last_seen=now)
    make_agent(payments, "fresh-2", applied_version=1, last_seen=now)
    make_agent(payments, "late", applied_version=1, last_seen=now - timedelta(hours=1))
    make_agent(payments, "old", applied_version=0, last_seen=now)
    make_agent(payments, "gone", revoked_at=now)
    make_agent(scopes[("search", "staging")], "other", applied_version=1, last_seen=now)

    response = page_of(admin_client, "payments", "staging")
    counts = dict((status, count) for status, _, count in response.context["agent_counts"])
    assert counts == {"in_sync": 2, "behind": 1, "stale": 1, "revoked": 1}
    html = response.content.decode()
    assert f"?scope__id__exact={payments.pk}&amp;status=behind" in html
    listed = [str(agent) for agent, _, _ in response.context["agents"]]
    assert listed == ["old", "late", "fresh-1", "fresh-2", "gone"]
    assert "other" not in html.split('id="scope-agent-list"')[1]

    monkeypatch.setattr("apps.scopes.status.PAGE_AGENTS", 2)
    response = page_of(admin_client, "payments", "staging")
    assert [str(agent) for agent, _, _ in response.context["agents"]] == ["old", "late"]
    assert "All 5 agents (the first 2 are above)" in response.content.decode()
    assert (
        f'href="/admin/agents/agent/?scope__id__exact={payments.pk}"' in response.content.decode()
    )


def test_the_page_costs_as_many_queries_however_much_the_scope_holds(admin_client, scopes):
    payments = scopes[("payments", "staging")]
    now = timezone.now()

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert page_of(admin_client, "payments", "staging").status_code == 200
        return len(captured)

    make_agent(payments, "one", applied_version=1, last_seen=now)
    publish_config(
        scope_id=payments.pk, config_url=URL + "/2", pooling_interval=30, rollout={"waves": [100]}
    )
    abort_rollout(scope_id=payments.pk, version=2)
    queries()  # the session and the user are read once for all
    few = queries()

    for number in range(4, 9):
        publish_config(scope_id=payments.pk, config_url=f"{URL}/{number}", pooling_interval=30)
    for number in range(12):
        make_agent(payments, f"more-{number}", applied_version=number % 3, last_seen=now)
    Environment.objects.filter(name="staging").update(approvals_required=1)
    author = user_with(EDITOR, "payments")
    for interval in (40, 50, 60):
        propose_change(scope_id=payments.pk, author=author, pooling_interval=interval)
        ChangeRequest.objects.filter(state=ChangeRequest.PENDING).update(
            state=ChangeRequest.CANCELLED
        )
    propose_change(scope_id=payments.pk, author=author, pooling_interval=70)
    assert queries() == few
    assert few <= 15, few
