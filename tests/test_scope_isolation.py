"""Each scope (an application in an environment) on its own: the scoped twins of the seed's
routes under /apps/{app}/envs/{env}/, versions numbered per scope, registration tokens and agents
bound to a scope, an agent token that reads only its own scope, change requests, rollouts and
roles per scope, and the watch hub waking one scope's watches only."""

import asyncio

import pytest
from django.core.management import CommandError

from apps.accounts.models import User
from apps.accounts.roles import APPROVER, EDITOR, OPERATOR
from apps.agents.models import Agent, RegistrationToken
from apps.audit.models import AuditEntry
from apps.changes.models import ChangeRequest
from apps.configs import hub as hub_module
from apps.configs.models import ConfigVersion
from apps.configs.services import state_of
from apps.rollouts.models import Rollout
from apps.scopes.models import Environment, Scope
from apps.scopes.services import default_scope, get_scope
from tests.support.clients import api_as, bearer
from tests.support.commands import rollout_status
from tests.support.scopes import make_two_by_two
from tests.support.scopes import user_with as scoped_user

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/a"
NEW_URL = "http://upstream.example/b"
PAYMENTS_STAGING = "/apps/payments/envs/staging"
PAYMENTS_PRODUCTION = "/apps/payments/envs/production"
SEARCH_STAGING = "/apps/search/envs/staging"
SEARCH_PRODUCTION = "/apps/search/envs/production"


@pytest.fixture
def fleet():
    """payments and search (and the default application) in staging and production."""
    make_two_by_two()


@pytest.fixture
def root(fleet):
    user = User.objects.create_user(email="root@example.com", is_superuser=True)
    return api_as(user)


def client_with(role: str, application: str | None = None, environment: str | None = None):
    return api_as(scoped_user(role, application, environment))


def scope_of(path: str) -> Scope:
    _, _, application, _, environment = path.split("/")
    return get_scope(application, environment)


def register(root, prefix: str = "", labels: dict | None = None, **body) -> tuple[str, str]:
    """(agent id, agent token) of an agent registered with a token issued on `prefix`."""
    issued = root.post(f"{prefix}/agent/admin", {"labels": labels or {}, **body}, "json")
    assert issued.status_code == 201, issued.content
    answer = bearer(issued.json()["registration_token"]).post(
        "/agent/register", {"name": "a"}, "json"
    )
    assert answer.status_code == 201, answer.content
    return answer.json()["agent_id"], answer.json()["agent_token"]


def test_each_scope_numbers_its_own_versions_and_keeps_its_own_history(root):
    assert (
        root.post(
            f"{PAYMENTS_STAGING}/config/admin", {"config_url": URL, "pooling_interval": 30}, "json"
        ).status_code
        == 201
    )
    assert (
        root.post("/config/admin", {"config_url": URL, "pooling_interval": 45}, "json").status_code
        == 201
    )
    changed = root.put("/config/admin", {"config_url": NEW_URL}, "json")
    assert changed.status_code == 200 and changed.json()["version"] == 2

    current = root.get(f"{PAYMENTS_STAGING}/config/admin")
    assert current.status_code == 200
    assert (current.json()["version"], current.json()["config_url"]) == (1, URL)
    assert current["ETag"] == '"1"'
    assert [
        entry["version"]
        for entry in root.get(f"{PAYMENTS_STAGING}/config/admin/history").json()["results"]
    ] == [1]
    assert [entry["version"] for entry in root.get("/config/admin/history").json()["results"]] == [
        2,
        1,
    ]
    # Nothing in the other scopes.
    assert root.get(f"{PAYMENTS_PRODUCTION}/config/admin").status_code == 404
    assert root.get(f"{SEARCH_STAGING}/config/admin/history").json()["results"] == []
    assert ConfigVersion.objects.filter(scope=scope_of(PAYMENTS_STAGING)).count() == 1
    entry = AuditEntry.objects.filter(action=AuditEntry.CONFIG_CREATED).order_by("id").first()
    assert (entry.application, entry.environment) == ("payments", "staging")


def test_a_rollback_and_if_match_stay_in_their_scope(root):
    for url in (URL, NEW_URL):
        root.post(
            f"{PAYMENTS_STAGING}/config/admin", {"config_url": url, "pooling_interval": 30}, "json"
        )
    root.post("/config/admin", {"config_url": NEW_URL, "pooling_interval": 45}, "json")

    # Version 2 does not exist in the default scope: nothing of payments' is restored there.
    assert root.post("/config/admin/rollback", {"version": 2}, "json").status_code == 404
    rolled = root.post(f"{PAYMENTS_STAGING}/config/admin/rollback", {"version": 1}, "json")
    assert rolled.status_code == 201 and rolled.json()["version"] == 3
    assert rolled.json()["config_url"] == URL
    # If-Match names the scope's own version.
    stale = root.put(
        f"{PAYMENTS_STAGING}/config/admin", {"pooling_interval": 60}, "json", HTTP_IF_MATCH='"1"'
    )
    assert stale.status_code == 412
    fresh = root.put(
        f"{PAYMENTS_STAGING}/config/admin", {"pooling_interval": 60}, "json", HTTP_IF_MATCH='"3"'
    )
    assert fresh.status_code == 200 and fresh.json()["version"] == 4
    assert ConfigVersion.objects.filter(scope=default_scope()).count() == 1


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("/apps/nope/envs/staging/config/admin", "Application 'nope'"),
        ("/apps/payments/envs/nope/config/admin", "Environment 'nope'"),
        ("/apps/nope/envs/staging/agents", "Application 'nope'"),
        ("/apps/payments/envs/nope/config/admin/rollout", "Environment 'nope'"),
    ],
)
def test_an_unknown_application_or_environment_is_404_naming_which(root, path, named):
    answer = root.get(path)
    assert answer.status_code == 404
    assert named in answer.json()["detail"]
    created = root.post(path, {"config_url": URL, "pooling_interval": 30}, "json")
    assert created.status_code in (404, 405)
    assert not ConfigVersion.objects.exists()


def test_roles_of_one_scope_act_there_only(fleet):
    editor = client_with(EDITOR, "payments", "staging")
    body = {"config_url": URL, "pooling_interval": 30}

    assert editor.post(f"{PAYMENTS_STAGING}/config/admin", body, "json").status_code == 201
    for elsewhere in (PAYMENTS_PRODUCTION, SEARCH_STAGING):
        refused = editor.post(f"{elsewhere}/config/admin", body, "json")
        assert refused.status_code == 403, elsewhere
    assert editor.post("/config/admin", body, "json").status_code == 403
    assert set(ConfigVersion.objects.values_list("scope_id", flat=True)) == {
        scope_of(PAYMENTS_STAGING).pk
    }
    # An editor of the whole application reads and writes each of its environments.
    application_editor = client_with(EDITOR, "payments")
    answer = application_editor.post(f"{PAYMENTS_PRODUCTION}/config/admin", body, "json")
    assert answer.status_code == 201
    assert application_editor.get(f"{SEARCH_STAGING}/config/admin").status_code == 403


def test_a_change_request_is_decided_in_its_own_scope(root):
    production = Environment.objects.get(name="production")
    production.approvals_required = 1
    production.save()
    body = {"config_url": URL, "pooling_interval": 30}
    # staging needs no approval: published at once.
    assert root.post(f"{PAYMENTS_STAGING}/config/admin", body, "json").status_code == 201
    proposed = client_with(EDITOR, "payments").post(
        f"{PAYMENTS_PRODUCTION}/config/admin", body, "json"
    )
    assert proposed.status_code == 202
    change_id = proposed.json()["id"]
    assert ChangeRequest.objects.get(pk=change_id).scope == scope_of(PAYMENTS_PRODUCTION)

    assert [
        c["id"] for c in root.get(f"{PAYMENTS_PRODUCTION}/config/admin/changes").json()["results"]
    ] == [change_id]
    assert root.get("/config/admin/changes").json()["results"] == []
    # Neither another scope's route nor an approver of another environment decides it.
    assert root.get(f"{SEARCH_PRODUCTION}/config/admin/changes/{change_id}").status_code == 404
    assert (
        root.post(
            f"{PAYMENTS_STAGING}/config/admin/changes/{change_id}/approve", {}, "json"
        ).status_code
        == 404
    )
    staging_approver = client_with(APPROVER, None, "staging")
    path = f"{PAYMENTS_PRODUCTION}/config/admin/changes/{change_id}/approve"
    assert staging_approver.post(path, {}, "json").status_code == 403
    assert ChangeRequest.objects.get(pk=change_id).state == ChangeRequest.PENDING

    approved = client_with(APPROVER, None, "production").post(path, {}, "json")
    assert approved.status_code == 200, approved.content
    assert approved.json()["published_version"] == 1
    assert ConfigVersion.objects.filter(scope=scope_of(PAYMENTS_PRODUCTION)).count() == 1
    assert ConfigVersion.objects.filter(scope=scope_of(PAYMENTS_STAGING)).count() == 1


def test_a_rollout_in_one_scope_does_not_hold_back_another(root):
    body = {"config_url": URL, "pooling_interval": 30}
    for prefix in (PAYMENTS_PRODUCTION, SEARCH_PRODUCTION):
        register(root, prefix)
        assert root.post(f"{prefix}/config/admin", body, "json").status_code == 201
    plan = {"waves": [50, 100], "bake_seconds": 3600}

    started = root.put(
        f"{PAYMENTS_PRODUCTION}/config/admin", {"config_url": NEW_URL, "rollout": plan}, "json"
    )
    assert started.status_code == 200, started.content
    # A direct change in search goes through while payments rolls.
    direct = root.put(f"{SEARCH_PRODUCTION}/config/admin", {"config_url": NEW_URL}, "json")
    assert direct.status_code == 200 and direct.json()["version"] == 2
    # payments' own publish is refused while its rollout rolls.
    again = root.put(f"{PAYMENTS_PRODUCTION}/config/admin", {"pooling_interval": 60}, "json")
    assert again.status_code == 409

    assert (
        root.get(f"{PAYMENTS_PRODUCTION}/config/admin/rollout").json()["state"] == Rollout.ROLLING
    )
    assert root.get(f"{SEARCH_PRODUCTION}/config/admin/rollout").status_code == 404
    assert (
        root.post(f"{SEARCH_PRODUCTION}/config/admin/rollout/abort", {}, "json").status_code == 404
    )
    aborted = root.post(f"{PAYMENTS_PRODUCTION}/config/admin/rollout/abort", {}, "json")
    assert aborted.status_code == 200 and aborted.json()["state"] == Rollout.ABORTED
    assert Rollout.objects.get().scope == scope_of(PAYMENTS_PRODUCTION)
    # The abort made payments' version 3; search's newest is still its version 2.
    assert ConfigVersion.objects.filter(scope=scope_of(SEARCH_PRODUCTION)).count() == 2
    assert ConfigVersion.objects.filter(scope=scope_of(PAYMENTS_PRODUCTION)).count() == 3


def test_a_registration_token_binds_its_agent_to_a_scope(root):
    root.post(
        f"{PAYMENTS_STAGING}/config/admin", {"config_url": URL, "pooling_interval": 30}, "json"
    )
    root.post("/config/admin", {"config_url": NEW_URL, "pooling_interval": 45}, "json")

    by_body, token = register(root, application="payments", environment="staging")
    by_path, _ = register(root, PAYMENTS_STAGING)
    in_default, _ = register(root)

    assert Agent.objects.get(pk=by_body).scope == scope_of(PAYMENTS_STAGING)
    assert Agent.objects.get(pk=by_path).scope == scope_of(PAYMENTS_STAGING)
    assert Agent.objects.get(pk=in_default).scope == default_scope()
    # The agent reads its own scope's configuration, by the same routes as ever.
    agent = bearer(token)
    version = agent.get("/config/version")
    assert version.status_code == 200
    assert (version.json()["version"], version.json()["config_url"]) == (1, URL)
    assert agent.get("/config/agent").json()["config_url"] == URL
    # The scope's agents list holds its agents only.
    listed = root.get(f"{PAYMENTS_STAGING}/agents").json()["results"]
    assert {a["id"] for a in listed} == {by_body, by_path}
    assert [a["id"] for a in root.get("/agents").json()["results"]] == [in_default]


def test_a_token_route_refuses_a_body_naming_another_scope_or_garbage(root):
    before = RegistrationToken.objects.count()
    other = root.post(f"{PAYMENTS_STAGING}/agent/admin", {"application": "search"}, "json")
    assert other.status_code == 400 and "application" in other.json()
    unknown = root.post("/agent/admin", {"application": "nope"}, "json")
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    garbage = root.post("/agent/admin", {"application": 7, "environment": ["x"]}, "json")
    assert garbage.status_code == 400
    assert RegistrationToken.objects.count() == before


def test_an_operator_of_one_scope_issues_tokens_there_only(fleet):
    operator = client_with(OPERATOR, "payments", "staging")
    assert operator.post(f"{PAYMENTS_STAGING}/agent/admin", {}, "json").status_code == 201
    assert (
        operator.post(
            "/agent/admin", {"application": "payments", "environment": "staging"}, "json"
        ).status_code
        == 201
    )
    assert (
        operator.post(
            "/agent/admin", {"application": "search", "environment": "staging"}, "json"
        ).status_code
        == 403
    )
    assert operator.post("/agent/admin", {}, "json").status_code == 403
    assert set(RegistrationToken.objects.values_list("scope_id", flat=True)) == {
        scope_of(PAYMENTS_STAGING).pk
    }


def test_an_agent_of_one_scope_reads_nothing_of_another(root):
    agent_id, token = register(root, SEARCH_STAGING)
    root.post(
        f"{PAYMENTS_STAGING}/config/admin", {"config_url": URL, "pooling_interval": 30}, "json"
    )
    agent = bearer(token)

    # Its own scope has no configuration yet: version 0, and 404 for the content.
    assert agent.get("/config/version").json()["version"] == 0
    assert agent.get("/config/agent").status_code == 404
    for path in (
        f"{PAYMENTS_STAGING}/config/admin",
        f"{PAYMENTS_STAGING}/config/admin/history",
        f"{PAYMENTS_STAGING}/agents",
        f"{PAYMENTS_STAGING}/config/admin/rollout",
        f"{PAYMENTS_STAGING}/config/admin/changes",
        f"{SEARCH_STAGING}/config/admin",
    ):
        assert agent.get(path).status_code in (401, 403), path
    # Another scope's agent routes by id answer 404: the agent is not there.
    assert root.post(f"{PAYMENTS_STAGING}/agents/{agent_id}/revoke").status_code == 404
    patched = root.patch(f"{PAYMENTS_STAGING}/agents/{agent_id}", {"labels": {"a": "b"}}, "json")
    assert patched.status_code == 404
    assert Agent.objects.get(pk=agent_id).revoked_at is None
    assert Agent.objects.get(pk=agent_id).labels == {}
    assert root.post(f"{SEARCH_STAGING}/agents/{agent_id}/revoke").status_code == 200


def test_heartbeat_hits_are_judged_by_the_agent_s_own_scope(root):
    """A hit of version 2 is a future version for an agent of a scope at version 1, even when
    another scope is at version 2."""
    root.post("/config/admin", {"config_url": URL, "pooling_interval": 30}, "json")
    root.put("/config/admin", {"config_url": NEW_URL}, "json")
    root.post(
        f"{PAYMENTS_STAGING}/config/admin", {"config_url": URL, "pooling_interval": 30}, "json"
    )
    agent_id, token = register(root, PAYMENTS_STAGING)
    report = {
        "applied_version": 1,
        "workers": [],
        "hits": [{"version": 1, "ok": 3, "failed": 0}, {"version": 2, "ok": 5, "failed": 0}],
    }
    assert bearer(token).post("/agent/heartbeat", report, "json").status_code == 204
    agent = Agent.objects.get(pk=agent_id)
    assert {(h.version, h.ok) for h in agent.version_hits.all()} == {(1, 3)}


def _waiter(hub, scope_id: int, agent_id: str, known: int):
    waiter = hub_module.Waiter(known, asyncio.get_running_loop().create_future())
    hub.subscribe(waiter)
    hub.place(waiter, Agent(pk=agent_id, scope_id=scope_id, labels={}))
    return waiter


def test_the_hub_wakes_only_the_changed_scope_s_watches():
    async def scenario():
        hub = hub_module.Hub()
        payments = _waiter(hub, 1, "00000000-0000-0000-0000-00000000000a", known=1)
        search = _waiter(hub, 2, "00000000-0000-0000-0000-00000000000b", known=1)
        pending = hub_module.Waiter(1, asyncio.get_running_loop().create_future())
        hub.subscribe(pending)

        state = {**state_of(None, 1), "version": 2, "uuid": "u2", "config_url": URL}
        hub.advance(state)

        assert payments.future.done() and payments.future.result()[1]["version"] == 2
        assert not search.future.done()
        # One not yet known may be of either scope: it reads the newest state itself.
        assert pending.future.result() == ("changed", None)
        assert hub.latest_of(1)["version"] == 2 and hub.latest_of(2)["version"] == 0
        # A notification naming no scope (an older release) changes nothing it serves: it asks
        # for a read of the database.
        hub.deliver({"type": "config", "version": 9, "revision": 0})
        assert not search.future.done() and hub.recheck_requested
        assert hub.latest_of(2)["version"] == 0
        hub.unsubscribe(search)
        assert 2 not in hub.by_scope and search not in hub.waiters

    asyncio.run(scenario())


def test_create_registration_token_issues_a_token_of_the_named_scope(fleet, capsys):
    from django.core.management import call_command

    call_command("create_registration_token", "--application", "search", "--environment", "staging")
    token = capsys.readouterr().out.strip()
    assert RegistrationToken.objects.get().scope == scope_of(SEARCH_STAGING)
    answer = bearer(token).post("/agent/register", {"name": "a"}, "json")
    assert Agent.objects.get(pk=answer.json()["agent_id"]).scope == scope_of(SEARCH_STAGING)
    with pytest.raises(CommandError, match="Application 'nope' does not exist"):
        call_command("create_registration_token", "--application", "nope")
    assert RegistrationToken.objects.count() == 1


@pytest.mark.django_db(transaction=True)  # the command closes old connections as it polls
def test_rollout_status_reports_the_named_scope_s_rollout(root):
    register(root, PAYMENTS_PRODUCTION)
    body = {"config_url": URL, "pooling_interval": 30}
    root.post(f"{PAYMENTS_PRODUCTION}/config/admin", body, "json")
    plan = {"waves": [50, 100], "bake_seconds": 3600}
    root.put(
        f"{PAYMENTS_PRODUCTION}/config/admin", {"config_url": NEW_URL, "rollout": plan}, "json"
    )

    code, out = rollout_status("--application", "payments", "--environment", "production")
    assert code == 1 and out.startswith("rollout of v2 (from v1): rolling")
    # The default scope has none; an unknown name is bad usage, naming it.
    assert rollout_status() == (1, "No rollout has been started yet.\n")
    code, said = rollout_status("--application", "nope")
    assert code == 2 and "Application 'nope' does not exist" in said
