"""Agent labels: the operator's. Bound by the registration token (the agent's own only when the
token allows them), changed by an operator, audited; labels in a heartbeat change nothing."""

import asyncio
import json
import subprocess
import time

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from apps.agents import auth as agent_auth
from apps.agents import labels as agent_labels
from apps.agents.models import Agent, RegistrationToken
from apps.agents.services import issue_registration_token, register_agent, set_agent_labels
from apps.audit.models import AuditEntry
from apps.configs import front
from apps.ops import metrics
from protocol.labels import InvalidLabels, check_labels, parse_label_pairs
from tests.support.asgi import call
from tests.support.clients import bearer
from tests.support.processes import base_env, manage

pytestmark = pytest.mark.django_db


def register(labels=None) -> tuple[Agent, str]:
    token, _ = issue_registration_token(labels=labels)
    return register_agent(token=token, name="a", hostname="h")


def test_registration_keeps_the_labels_sent_when_the_token_allows_them(api):
    token, _ = issue_registration_token(allow_agent_labels=True)
    response = bearer(token).post(
        "/agent/register", {"name": "e1", "labels": {"ring": "canary", "zone": "eu-1"}}, "json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["labels"] == {"ring": "canary", "zone": "eu-1"}
    agent = Agent.objects.get(pk=response.json()["agent_id"])
    assert agent.labels == {"ring": "canary", "zone": "eu-1"}


def test_an_agent_cannot_label_itself_a_canary_with_a_plain_token(api):
    token, record = issue_registration_token()
    response = bearer(token).post(
        "/agent/register", {"name": "e1", "labels": {"ring": "canary"}}, "json"
    )
    # It registers (an agent started with --label keeps working), without its labels.
    assert response.status_code == 201, response.content
    assert response.json()["labels"] == {}
    agent = Agent.objects.get(pk=response.json()["agent_id"])
    assert agent.labels == {}
    entry = AuditEntry.objects.get(action=AuditEntry.AGENT_REGISTERED)
    assert entry.detail["labels"] == {}
    assert entry.detail["labels_left_out"] == {"ring": "canary"}
    assert entry.detail["registration_token"] == record.pk


def test_the_tokens_labels_bind_the_agent_and_win_over_its_own(admin_api):
    issued = admin_api.post(
        "/agent/admin",
        {"ttl": 600, "labels": {"ring": "main"}, "allow_agent_labels": True},
        format="json",
    )
    assert issued.status_code == 201, issued.content
    body = issued.json()
    assert body["labels"] == {"ring": "main"} and body["allow_agent_labels"] is True
    record = RegistrationToken.objects.get()
    assert (record.labels, record.allow_agent_labels) == ({"ring": "main"}, True)
    issued_entry = AuditEntry.objects.get(action=AuditEntry.REGISTRATION_TOKEN_ISSUED)
    assert issued_entry.detail["labels"] == {"ring": "main"}

    response = bearer(body["registration_token"]).post(
        "/agent/register", {"labels": {"ring": "canary", "zone": "eu-1"}}, "json"
    )
    assert response.status_code == 201, response.content
    assert Agent.objects.get().labels == {"ring": "main", "zone": "eu-1"}


def test_a_token_without_allow_agent_labels_gives_only_its_own(admin_api):
    issued = admin_api.post("/agent/admin", {"labels": {"ring": "canary"}}, format="json")
    assert issued.status_code == 201, issued.content
    token = issued.json()["registration_token"]
    response = bearer(token).post("/agent/register", {"labels": {"zone": "eu-1"}}, "json")
    assert response.status_code == 201
    assert Agent.objects.get().labels == {"ring": "canary"}


@pytest.mark.parametrize(
    "body",
    [
        {"labels": {"ring": "can ary"}},
        {"labels": ["ring=canary"]},
        {"labels": {f"k{i}": "v" for i in range(17)}},
        {"allow_agent_labels": "maybe"},
        {"ttl": 5},
    ],
)
def test_bad_token_requests_are_400_and_issue_nothing(admin_api, body):
    response = admin_api.post("/agent/admin", body, format="json")
    assert response.status_code == 400, response.content
    assert not RegistrationToken.objects.exists()


def test_the_seeds_get_still_issues_a_token_without_labels(admin_api):
    response = admin_api.get("/agent/admin?ttl=600")
    assert response.status_code == 200
    assert response.json()["labels"] == {}
    assert response.json()["allow_agent_labels"] is False


@pytest.mark.parametrize(
    "labels",
    [
        {"ring": "can ary"},
        {"bad key": "x"},
        {"ring": ""},
        {"k" * 64: "x"},
        {"ring": "x" * 64},
        {f"k{i}": "v" for i in range(17)},
        {"ring": {"nested": "x"}},
        ["ring=canary"],
    ],
)
def test_bad_labels_at_registration_are_400_and_keep_the_token(labels):
    token, record = issue_registration_token()
    response = bearer(token).post("/agent/register", {"labels": labels}, "json")
    assert response.status_code == 400
    assert "labels" in response.json()
    assert not Agent.objects.exists()
    record.refresh_from_db()
    assert record.used_at is None


def test_heartbeat_labels_change_nothing_and_are_counted_and_logged_once(caplog):
    agent, token = register({"ring": "main"})
    client = bearer(token)
    beat = {"applied_version": None, "workers": []}
    ignored = metrics.instruments().heartbeat_labels_ignored._value.get()
    with caplog.at_level("WARNING", logger="apps.agents.labels"):
        for _ in range(3):
            response = client.post(
                "/agent/heartbeat", {**beat, "labels": {"ring": "canary"}}, "json"
            )
            assert response.status_code == 204
    agent.refresh_from_db()
    assert agent.labels == {"ring": "main"}
    assert metrics.instruments().heartbeat_labels_ignored._value.get() == ignored + 3
    # Once per agent per hour, not once per heartbeat.
    said = [r.getMessage() for r in caplog.records if r.name == "apps.agents.labels"]
    assert len(said) == 1
    assert "ring=canary" in said[0] and "ring=main" in said[0] and str(agent.pk) in said[0]
    # Its own labels, or none, are no news.
    own = client.post("/agent/heartbeat", {**beat, "labels": {"ring": "main"}}, "json")
    assert own.status_code == 204
    assert client.post("/agent/heartbeat", beat, "json").status_code == 204
    assert metrics.instruments().heartbeat_labels_ignored._value.get() == ignored + 3
    response = client.post("/agent/heartbeat", {**beat, "labels": {"ring": "a b"}}, "json")
    assert response.status_code == 400
    agent.refresh_from_db()
    assert agent.labels == {"ring": "main"}


def test_the_log_of_ignored_labels_speaks_again_after_its_period(caplog, monkeypatch):
    agent, _ = register({"ring": "main"})
    now = [1000.0]
    monkeypatch.setattr(agent_labels, "clock", lambda: now[0])
    with caplog.at_level("WARNING", logger="apps.agents.labels"):
        assert agent_labels.ignore_reported_labels(agent, {"ring": "canary"}) is True
        now[0] += agent_labels.LOG_SECONDS - 1
        agent_labels.ignore_reported_labels(agent, {"ring": "canary"})
        now[0] += 2
        agent_labels.ignore_reported_labels(agent, {"ring": "canary"})
    assert len([r for r in caplog.records if r.name == "apps.agents.labels"]) == 2


# An operator changes them ---------------------------------------------------------------------


def test_an_operator_changes_an_agents_labels_audited(admin_api):
    agent, _ = register({"ring": "main"})
    response = admin_api.patch(
        f"/agents/{agent.pk}", {"labels": {"ring": "canary", "zone": "a"}}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["labels"] == {"ring": "canary", "zone": "a"}
    agent.refresh_from_db()
    assert agent.labels == {"ring": "canary", "zone": "a"}
    assert agent.labels_changed_at is not None
    entry = AuditEntry.objects.get(action=AuditEntry.AGENT_LABELS_CHANGED)
    assert entry.detail == {"before": {"ring": "main"}, "after": {"ring": "canary", "zone": "a"}}
    assert entry.target == f"agent {agent.pk}"
    # The same labels again change nothing and say nothing.
    again = admin_api.patch(
        f"/agents/{agent.pk}", {"labels": {"ring": "canary", "zone": "a"}}, format="json"
    )
    assert again.status_code == 200
    assert AuditEntry.objects.filter(action=AuditEntry.AGENT_LABELS_CHANGED).count() == 1


@pytest.mark.parametrize(
    "body", [{}, {"labels": {"ring": "a b"}}, {"labels": "ring=canary"}, {"labels": None}]
)
def test_bad_label_changes_are_400_and_change_nothing(admin_api, body):
    agent, _ = register({"ring": "main"})
    response = admin_api.patch(f"/agents/{agent.pk}", body, format="json")
    assert response.status_code == 400, response.content
    agent.refresh_from_db()
    assert agent.labels == {"ring": "main"}
    assert not AuditEntry.objects.filter(action=AuditEntry.AGENT_LABELS_CHANGED).exists()


def test_labels_of_an_unknown_agent_are_404(admin_api):
    response = admin_api.patch(
        "/agents/00000000-0000-0000-0000-000000000009", {"labels": {}}, format="json"
    )
    assert response.status_code == 404


def test_an_agent_token_cannot_change_labels(api):
    agent, token = register({"ring": "main"})
    response = bearer(token).patch(f"/agents/{agent.pk}", {"labels": {"ring": "c"}}, "json")
    assert response.status_code == 401
    agent.refresh_from_db()
    assert agent.labels == {"ring": "main"}


def test_the_admin_agent_page_changes_labels_through_the_service(client, admin_user):
    agent, _ = register({"ring": "main"})
    client.force_login(admin_user)
    page = f"/admin/agents/agent/{agent.pk}/change/"
    assert 'value="ring=main"' in client.get(page).content.decode()
    bad = client.post(page, {"name": "a", "hostname": "h", "label_pairs": "ring=a b"})
    assert bad.status_code == 200 and "must be 1 to 63" in bad.content.decode()
    response = client.post(page, {"name": "a", "hostname": "h", "label_pairs": "ring=canary, z=1"})
    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.labels == {"ring": "canary", "z": "1"}
    entry = AuditEntry.objects.get(action=AuditEntry.AGENT_LABELS_CHANGED)
    assert entry.actor == admin_user.email


def test_agents_filter_by_label_and_show_labels(admin_api):
    canary, _ = register({"ring": "canary", "zone": "a"})
    register({"ring": "canary", "zone": "b"})
    register({"ring": "main", "zone": "a"})
    register()
    response = admin_api.get("/agents?label=ring=canary")
    assert response.status_code == 200
    items = response.json()["results"]
    assert len(items) == 2
    assert {item["labels"]["zone"] for item in items} == {"a", "b"}
    assert all("target_version" in item for item in items)
    both = admin_api.get("/agents?label=ring=canary&label=zone=a").json()["results"]
    assert [item["id"] for item in both] == [str(canary.pk)]
    assert admin_api.get("/agents?label=ring=none").json()["results"] == []
    assert len(admin_api.get("/agents").json()["results"]) == 4
    for bad in ["ring", "ring=a b", "=x"]:
        response = admin_api.get(f"/agents?label={bad}")
        assert response.status_code == 400
        assert "label" in response.json()


def test_label_rules():
    assert parse_label_pairs(["ring=canary", " zone = eu-1 "]) == {"ring": "canary", "zone": "eu-1"}
    assert check_labels({"tier": 1}) == {"tier": "1"}
    for bad in (["ring"], ["ring=a", "ring=b"], ["ring=a/b"]):
        with pytest.raises(InvalidLabels):
            parse_label_pairs(bad)


def show_agent_labels(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    # show_settings prints where each setting came from, with the role's settings file.
    return subprocess.run(
        manage("show_settings", *args),
        env=base_env(CONFIG_ROLE="agent", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_labels_from_the_environment_and_the_settings_file(tmp_path):
    from_env = show_agent_labels(tmp_path, AGENT_LABELS="ring=canary,zone=eu-1")
    assert from_env.returncode == 0, from_env.stderr
    line = next(line for line in from_env.stdout.splitlines() if "AGENT_LABELS" in line)
    assert "canary" in line and "eu-1" in line and "env" in line

    settings_file = tmp_path / "agent.yaml"
    settings_file.write_text("labels:\n  ring: canary\n  tier: 2\n")
    from_file = show_agent_labels(tmp_path, "--config", str(settings_file))
    assert from_file.returncode == 0, from_file.stderr
    line = next(line for line in from_file.stdout.splitlines() if "AGENT_LABELS" in line)
    assert "canary" in line and "file" in line

    settings_file.write_text("labels:\n  ring: can ary\n")
    broken = show_agent_labels(tmp_path, "--config", str(settings_file))
    assert broken.returncode != 0
    assert "labels" in broken.stderr

    bad_env = show_agent_labels(tmp_path, AGENT_LABELS="ring")
    assert bad_env.returncode != 0
    assert "AGENT_LABELS" in bad_env.stderr


def test_run_agent_refuses_a_bad_label(tmp_path):
    result = subprocess.run(
        manage(
            "run_agent",
            "--controller-url",
            "http://127.0.0.1:9",
            "--worker-url",
            "http://127.0.0.1:9",
            "--state-dir",
            str(tmp_path),
            "--label",
            "ring canary",
            "--once",
        ),
        env=base_env(INTERNAL_KEY="k" * 40),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--label" in result.stderr


def test_label_flags_are_repeatable_and_replace_agent_labels(tmp_path, monkeypatch):
    from agent.command import build_agent, read_agent_settings

    monkeypatch.setenv("INTERNAL_KEY", "k" * 40)
    monkeypatch.setenv("AGENT_LABELS", "ring=main,tier=2")
    monkeypatch.delenv("CONFIG_FILE", raising=False)
    options = {
        "controller_url": "http://127.0.0.1:9",
        "worker_urls": ["http://127.0.0.1:9"],
        "state_dir": str(tmp_path),
    }
    from_env, _ = build_agent(options, read_agent_settings(None))
    assert from_env.labels == {"ring": "main", "tier": "2"}
    flagged = {**options, "labels": ["ring=canary", "zone=eu-1"]}
    from_flags, _ = build_agent(flagged, read_agent_settings(None))
    assert from_flags.labels == {"ring": "canary", "zone": "eu-1"}


def test_admin_shows_the_labels_and_filters_by_one(client, admin_user):
    register({"ring": "canary", "zone": "a"})
    register({"ring": "main"})
    register()
    client.force_login(admin_user)

    page = client.get("/admin/agents/agent/")
    html = page.content.decode()
    assert '<code class="agent-label">ring=canary</code>' in html
    assert '<code class="agent-label">zone=a</code>' in html
    # The filter offers the pairs the agents carry.
    assert "?label=ring%3Dcanary" in html and "?label=zone%3Da" in html

    def listed(query: str) -> list[dict]:
        found = client.get(f"/admin/agents/agent/?{query}").context["cl"].result_list
        return [agent.labels for agent in found]

    assert listed("label=ring%3Dcanary") == [{"ring": "canary", "zone": "a"}]
    assert sorted(map(str, listed("label=ring%3Dmain"))) == ["{'ring': 'main'}"]
    assert listed("label=ring%3Dnone") == []
    assert listed("label=not-a-pair") == []


# The fast path (the ASGI front) --------------------------------------------------------------

PLAN = {"canary_labels": {"ring": "canary"}, "waves": [100], "bake_seconds": 600}


def canary_rollout() -> None:
    """Version 2 rolling out to the canaries first: a canary is answered 2, the others 1."""
    from apps.configs.actions import publish_config

    publish_config(config_url="http://upstream.example/v1", pooling_interval=30)
    publish_config(config_url="http://upstream.example/v2", pooling_interval=30, rollout=PLAN)


async def asgi(app, token: str, method: str, path: str, query: str = "", body=None) -> tuple:
    """One request through the ASGI front, as a server makes it: (status, decoded body)."""
    headers = [(b"host", b"localhost"), (b"authorization", f"Bearer {token}".encode())]
    if body is not None:
        headers.append((b"content-type", b"application/json"))
    raw = json.dumps(body or {}).encode()
    return await call(app, method, path, headers, raw, query)


def with_front(scenario):
    async def run():
        app = front.WatchEndpoint(fallback=None)
        await app.hub.start()
        try:
            return await scenario(app)
        finally:
            await app.heartbeats.stop()
            await app.hub.stop()

    return asyncio.run(run())


@pytest.mark.django_db(transaction=True)
def test_canary_labels_in_a_fast_path_heartbeat_do_not_make_a_canary():
    canary_rollout()
    agent, token = register({"ring": "main"})
    ignored = metrics.instruments().heartbeat_labels_ignored._value.get()
    beat = {"applied_version": 1, "workers": [], "labels": {"ring": "canary"}}

    async def scenario(app):
        assert (await asgi(app, token, "POST", "/agent/heartbeat", body=beat))[0] == 204
        await app.heartbeats.flush()
        return await asgi(app, token, "GET", "/config/version")

    status, answer = with_front(scenario)
    assert (status, answer["version"]) == (200, 1)
    agent.refresh_from_db()
    assert (agent.labels, agent.applied_version) == ({"ring": "main"}, 1)
    assert metrics.instruments().heartbeat_labels_ignored._value.get() == ignored + 1


@pytest.mark.django_db(transaction=True)
def test_after_an_operator_changes_labels_the_fast_path_serves_the_new_target(settings):
    # The process remembers the agent (with its labels) far longer than the test takes: only
    # forgetting it on the change makes the next watch see the new labels.
    settings.AGENT_AUTH_CACHE_SECONDS = 600
    canary_rollout()
    agent, token = register({"ring": "main"})

    async def scenario(app):
        before = await asgi(app, token, "GET", "/config/version")
        await asyncio.to_thread(closing(set_agent_labels), agent, {"ring": "canary"})
        after = await asgi(app, token, "GET", "/config/version")
        return before[1]["version"], after[1]["version"]

    assert with_front(scenario) == (1, 2)


@pytest.mark.django_db(transaction=True)
def test_a_held_watch_is_answered_when_new_labels_move_its_target():
    canary_rollout()
    agent, token = register({"ring": "main"})

    async def scenario(app):
        held = asyncio.ensure_future(
            asgi(app, token, "GET", "/config/version", query="version=1&wait=30")
        )
        deadline = time.monotonic() + 15
        while not any(w.agent_id for w in app.hub.waiters) or (
            django_settings.REDIS_URL and not app.hub.redis_healthy
        ):
            assert time.monotonic() < deadline, "the watch was never held"
            await asyncio.sleep(0.02)
        started = time.monotonic()
        await asyncio.to_thread(closing(set_agent_labels), agent, {"ring": "canary"})
        status, answer = await asyncio.wait_for(held, 10)
        return status, answer["version"], time.monotonic() - started

    status, version, took = with_front(scenario)
    assert (status, version) == (200, 2)
    assert took < 5


@pytest.mark.django_db(transaction=True)
def test_every_process_forgets_an_agent_whose_labels_changed_at_its_sweep():
    agent, _ = register({"ring": "main"})
    agent_auth.sweep_revocations()
    agent_auth.find_agents([agent.token_hash])
    assert agent_auth.remembered_agent(agent.token_hash) == (True, agent)
    # As another process's set_agent_labels writes it: this process was not told.
    Agent.objects.filter(pk=agent.pk).update(
        labels={"ring": "canary"}, labels_changed_at=timezone.now()
    )
    assert agent_auth.sweep_revocations() == 1
    assert agent_auth.remembered_agent(agent.token_hash)[0] is False


def closing(function):
    """A function run in a thread of its own gives its database connection back."""

    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            connection.close()

    return run


def test_create_registration_token_binds_labels(capsys):
    from django.core.management import call_command

    call_command("create_registration_token", "--label", "ring=canary", "--allow-agent-labels")
    record = RegistrationToken.objects.get()
    assert (record.labels, record.allow_agent_labels) == ({"ring": "canary"}, True)
    token = capsys.readouterr().out.strip()
    register_agent(token=token, labels={"ring": "main", "zone": "a"})
    assert Agent.objects.get().labels == {"ring": "canary", "zone": "a"}


def test_the_admin_issues_a_token_with_labels(client, admin_user):
    client.force_login(admin_user)
    page = "/admin/agents/registrationtoken/issue/"
    bad = client.post(page, {"ttl": 3600, "labels": "ring"})
    assert bad.status_code == 200 and "must be KEY=VALUE" in bad.content.decode()
    assert not RegistrationToken.objects.exists()
    response = client.post(page, {"ttl": 3600, "labels": "ring=canary", "allow_agent_labels": "on"})
    assert response.status_code == 200
    record = RegistrationToken.objects.get()
    assert (record.labels, record.allow_agent_labels) == ({"ring": "canary"}, True)
