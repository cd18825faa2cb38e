"""Agent labels: sent at registration and with every heartbeat, kept, filtered on."""

import subprocess

import pytest
from rest_framework.test import APIClient

from apps.agents.models import Agent
from apps.agents.services import issue_registration_token, register_agent
from protocol.labels import InvalidLabels, check_labels, parse_label_pairs
from tests.support.processes import base_env, manage

pytestmark = pytest.mark.django_db


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def register(labels=None) -> tuple[Agent, str]:
    token, _ = issue_registration_token()
    return register_agent(token=token, name="a", hostname="h", labels=labels)


def test_registration_keeps_the_labels_sent(api):
    token, _ = issue_registration_token()
    response = bearer(token).post(
        "/agent/register", {"name": "e1", "labels": {"ring": "canary", "zone": "eu-1"}}, "json"
    )
    assert response.status_code == 201, response.content
    agent = Agent.objects.get(pk=response.json()["agent_id"])
    assert agent.labels == {"ring": "canary", "zone": "eu-1"}


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


def test_heartbeat_replaces_the_labels_and_leaving_them_out_keeps_them():
    agent, token = register({"ring": "canary"})
    client = bearer(token)
    beat = {"applied_version": None, "workers": []}
    assert (
        client.post("/agent/heartbeat", {**beat, "labels": {"ring": "main"}}, "json").status_code
        == 204
    )
    agent.refresh_from_db()
    assert agent.labels == {"ring": "main"}
    assert client.post("/agent/heartbeat", beat, "json").status_code == 204
    agent.refresh_from_db()
    assert agent.labels == {"ring": "main"}
    response = client.post("/agent/heartbeat", {**beat, "labels": {"ring": "a b"}}, "json")
    assert response.status_code == 400
    agent.refresh_from_db()
    assert agent.labels == {"ring": "main"}


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
