"""A controller from before applications and environments, upgraded: a database filled at the
previous schema is migrated, and everything it held is in the default scope, with the agents'
tokens still working. Runs on whichever database the suite runs on (SQLite, PostgreSQL)."""

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from apps.scopes.services import forget_default_scope
from controller_site.tokens import AGENT_PREFIX, REGISTRATION_PREFIX, hash_token, new_token
from tests.support.clients import bearer

# The newest migration of each app before scopes came in.
BEFORE = [
    ("agents", "0006_operator_labels"),
    ("configs", "0001_initial"),
    ("rollouts", "0003_wave_timeout"),
    ("changes", "0001_initial"),
    ("audit", "0006_agent_labels_changed_action"),
    ("scopes", None),
]


def migrate(targets):
    MigrationExecutor(connection).migrate(targets)
    nodes = [(app, name) for app, name in targets if name is not None]
    return MigrationExecutor(connection).loader.project_state(nodes).apps


def latest():
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def fill(apps, agent_token: str) -> None:
    """What a controller of the previous release holds: two versions, a rollout of the second, a
    change request, an agent, registration tokens and audit entries."""
    User = apps.get_model("accounts", "User")
    ConfigVersion = apps.get_model("configs", "ConfigVersion")
    Rollout = apps.get_model("rollouts", "Rollout")
    ChangeRequest = apps.get_model("changes", "ChangeRequest")
    Agent = apps.get_model("agents", "Agent")
    RegistrationToken = apps.get_model("agents", "RegistrationToken")
    AuditEntry = apps.get_model("audit", "AuditEntry")
    author = User.objects.create(email="editor@example.com", password="!")
    ConfigVersion.objects.create(version=1, config_url="http://up.example/1", pooling_interval=30)
    ConfigVersion.objects.create(version=2, config_url="http://up.example/2", pooling_interval=60)
    Rollout.objects.create(version=2, previous_version=1, waves=[100], state="completed")
    ChangeRequest.objects.create(
        base_version=2, config_url="http://up.example/3", pooling_interval=60, author=author
    )
    agent = Agent.objects.create(name="edge-1", token_hash=hash_token(agent_token))
    now = timezone.now()
    RegistrationToken.objects.create(
        token_hash=hash_token(new_token(REGISTRATION_PREFIX)),
        expires_at=now + timedelta(hours=1),
        used_at=now,
        used_by=agent,
    )
    RegistrationToken.objects.create(
        token_hash=hash_token(new_token(REGISTRATION_PREFIX)), expires_at=now + timedelta(hours=1)
    )
    for action in ("config.created", "config.updated", "rollout.completed", "login.succeeded"):
        AuditEntry.objects.create(action=action, actor="editor@example.com")


@pytest.mark.django_db(transaction=True)
def test_an_upgraded_database_keeps_everything_in_the_default_scope_and_agents_keep_working():
    agent_token = new_token(AGENT_PREFIX)
    try:
        fill(migrate(BEFORE), agent_token)
        apps = migrate(latest())
    finally:
        # Whatever happened, the suite goes on at the newest schema.
        migrate(latest())
        forget_default_scope()

    Scope = apps.get_model("scopes", "Scope")
    (scope,) = Scope.objects.select_related("application", "environment")
    assert (scope.application.name, scope.environment.name) == ("default", "production")
    in_scope = {
        label: apps.get_model(*label.split(".")).objects.filter(scope=scope).count()
        for label in (
            "configs.ConfigVersion",
            "rollouts.Rollout",
            "changes.ChangeRequest",
            "agents.Agent",
            "agents.RegistrationToken",
        )
    }
    assert in_scope == {
        "configs.ConfigVersion": 2,
        "rollouts.Rollout": 1,
        "changes.ChangeRequest": 1,
        "agents.Agent": 1,
        "agents.RegistrationToken": 2,
    }
    AuditEntry = apps.get_model("audit", "AuditEntry")
    named = dict(AuditEntry.objects.values_list("action", "application"))
    assert named == {
        "config.created": "default",
        "config.updated": "default",
        "rollout.completed": "default",
        "login.succeeded": "",  # a login belongs to no scope
    }

    # The agent's token from before still reads its configuration, now the default scope's.
    agent = bearer(agent_token)
    version = agent.get("/config/version")
    assert version.status_code == 200, version.content
    assert version.json()["version"] == 2
    config = agent.get("/config/agent")
    assert config.status_code == 200
    assert config.json()["config_url"] == "http://up.example/2"
