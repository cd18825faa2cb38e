import subprocess

import pytest
from django.core.management import call_command

from apps.agents.models import RegistrationToken
from controller_site.tokens import hash_token
from tests.support.processes import ROOT, base_env, manage
from tests.support.processes import test_database_url as database_url

pytestmark = pytest.mark.django_db


def test_healthz_and_readyz(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    response = api.get("/readyz")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


def test_openapi_schema_and_docs_are_served_without_internet(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in [
        "/login",
        "/login/refresh",
        "/config/admin",
        "/config/admin/history",
        "/config/admin/rollback",
        "/config/version",
        "/config/stream",
        "/config/agent",
        "/agent/admin",
        "/agent/register",
        "/agent/heartbeat",
        "/agents",
        "/agents/{agent_id}/revoke",
        "/healthz",
        "/readyz",
        "/metrics",
    ]:
        assert path in paths, path
    docs = api.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui-dist" in docs.content and b"cdn.jsdelivr" not in docs.content
    redoc = api.get("/api/redoc/")
    assert redoc.status_code == 200
    assert b"redoc" in redoc.content and b"cdn.jsdelivr" not in redoc.content


def test_create_registration_token_command_prints_a_usable_token(capsys):
    call_command("create_registration_token", "--ttl", "600")
    token = capsys.readouterr().out.strip()
    assert RegistrationToken.objects.get().token_hash == hash_token(token)


def test_browsable_api_works_for_a_logged_in_admin(client, admin_user):
    client.force_login(admin_user)
    response = client.get("/config/admin", HTTP_ACCEPT="text/html")
    assert response.status_code == 404
    assert b"<html" in response.content
    assert client.get("/agents", HTTP_ACCEPT="text/html").status_code == 200


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_create_registration_token_prints_only_the_token_on_stdout_and_logs_on_stderr():
    # `make run-agent` reads the token from stdout: a log line there would become part of it.
    result = subprocess.run(
        manage("create_registration_token"),
        cwd=ROOT,
        env=base_env(DATABASE_URL=database_url(), LOG_LEVEL="INFO"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (token,) = result.stdout.splitlines()
    assert RegistrationToken.objects.get().token_hash == hash_token(token)
    assert "registration token issued" in result.stderr
