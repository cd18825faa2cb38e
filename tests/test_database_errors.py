"""A database that cannot answer is a 503 with Retry-After; a query the database refuses is a
bug, answered 500 and logged with its traceback. And the label lookup that once was such a bug on
SQLite works on both backends (this module runs on each in CI)."""

import logging
import socket

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connection, transaction
from django.test import Client
from rest_framework.test import APIClient

from apps.agents import services
from apps.agents.services import issue_registration_token, register_agent
from controller_site.errors import DATABASE_DOWN, is_database_failure
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

pytestmark = pytest.mark.django_db


def register(labels: dict) -> str:
    token, _ = issue_registration_token(labels=labels)
    agent, _ = register_agent(token=token, name=labels.get("zone", "a"), hostname="h")
    return str(agent.pk)


def raised_by(sql: str) -> DatabaseError:
    # In a savepoint, so that PostgreSQL takes the next query of the test.
    with pytest.raises(DatabaseError) as caught, transaction.atomic(), connection.cursor() as cur:
        cur.execute(sql)
    return caught.value


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_label_filter_of_the_api_answers_on_this_backend(admin_api):
    canary = register({"ring": "canary", "zone": "a"})
    register({"ring": "main", "zone": "b"})
    response = admin_api.get("/agents?label=ring=canary")
    assert response.status_code == 200, response.content
    assert [item["id"] for item in response.json()["results"]] == [canary]


def test_the_label_filter_of_the_admin_agent_list_answers_on_this_backend(client, admin_user):
    register({"ring": "canary", "zone": "a"})
    register({"ring": "main", "zone": "b"})
    client.force_login(admin_user)
    page = client.get("/admin/agents/agent/?label=ring%3Dcanary")
    assert page.status_code == 200
    assert [agent.name for agent in page.context["cl"].result_list] == ["a"]


def test_a_refused_query_is_not_an_outage():
    assert not is_database_failure(raised_by("SELECT * FROM no_such_table"))
    assert not is_database_failure(raised_by("SELEC 1"))


def test_an_unreachable_database_is_an_outage():
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(host="127.0.0.1", port=free_port(), connect_timeout=2)
    assert is_database_failure(caught.value)


@pytest.mark.postgres
def test_a_statement_timeout_is_an_outage():
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 50")
    assert is_database_failure(raised_by("SELECT pg_sleep(2)"))


def test_a_broken_query_in_a_view_is_500_with_its_traceback_not_503(admin_api, monkeypatch, caplog):
    register({"ring": "canary"})

    def broken(agents, labels):
        with connection.cursor() as cursor:
            cursor.execute("SELECT no_such_column FROM agents")
        return agents

    monkeypatch.setattr(services, "filter_by_labels", broken)
    admin_api.raise_request_exception = False
    with caplog.at_level(logging.ERROR):
        response = admin_api.get("/agents?label=ring=canary")
    assert response.status_code == 500
    assert "Retry-After" not in response.headers
    assert DATABASE_DOWN.encode() not in response.content
    logged = [record for record in caplog.records if record.exc_info]
    assert logged, "the error is logged with its traceback"
    assert "no_such_column" in str(logged[0].exc_info[1])


def test_an_outage_in_a_view_is_503_with_retry_after(monkeypatch):
    get_user_model().objects.create_superuser(email=ADMIN_EMAIL, password=ADMIN_PASSWORD)
    client = APIClient()
    login = client.post("/login", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, "json")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {login.json()['access']}")

    def unreachable(agents, labels):
        psycopg.connect(host="127.0.0.1", port=free_port(), connect_timeout=2)

    monkeypatch.setattr(services, "filter_by_labels", unreachable)
    response = client.get("/agents?label=ring=canary")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json() == {"detail": DATABASE_DOWN}


def test_a_broken_query_in_the_admin_is_500_not_503(admin_user, monkeypatch):
    def broken(agents, labels):
        with connection.cursor() as cursor:
            cursor.execute("SELECT no_such_column FROM agents")
        return agents

    monkeypatch.setattr(services, "filter_by_labels", broken)
    client = Client(raise_request_exception=False)
    client.force_login(admin_user)
    register({"ring": "canary"})
    page = client.get("/admin/agents/agent/?label=ring%3Dcanary")
    assert page.status_code == 500
    assert "Retry-After" not in page.headers
