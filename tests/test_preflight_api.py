"""POST /config/admin/preflight and POST /agent/preflight through the API: input rules, who may
call them, and how the answers meet. (tests/e2e/test_preflight.py runs it through real agents.)"""

import threading
import time

import pytest
from django.core.cache import cache
from django.db import connection

from apps.agents.models import Agent
from apps.configs.errors import UnknownPreflight
from apps.configs.preflight import (
    _request_key,
    fetch_passed,
    record_preflight_result,
    run_preflight,
)

URL = "http://upstream.example/next"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"config_url": "not a url"},
        {"config_url": "ftp://example.com/"},
        {"config_url": URL, "agents": 0},
        {"config_url": URL, "agents": "3"},
        {"config_url": URL, "agents": 21},
        {"config_url": URL, "timeout_seconds": 0},
        {"config_url": URL, "timeout_seconds": 61},
        {"config_url": URL, "timeout_seconds": 2.5},
    ],
)
def test_bad_preflight_request_is_400(admin_api, registered_agent, body):
    response = admin_api.post("/config/admin/preflight", body, format="json")

    assert response.status_code == 400, response.content


def test_preflight_without_a_live_agent_is_409(admin_api, registered_agent):
    Agent.objects.update(last_seen=None)

    response = admin_api.post("/config/admin/preflight", {"config_url": URL}, format="json")

    assert response.status_code == 409
    assert "No agent is live" in response.json()["detail"]


def test_preflight_needs_an_admin(api, agent_api):
    assert api.post("/config/admin/preflight", {"config_url": URL}, format="json").status_code == (
        401
    )
    # An agent token is not an admin's.
    response = agent_api.post("/config/admin/preflight", {"config_url": URL}, format="json")
    assert response.status_code == 401


def test_an_agent_that_does_not_answer_is_reported_with_an_error(registered_agent):
    started = time.monotonic()

    answer = run_preflight(config_url=URL, agents=3, timeout_seconds=1)

    assert time.monotonic() - started >= 1
    assert answer["ok"] is False
    assert answer["results"] == [
        {
            "agent_id": str(registered_agent[0].pk),
            "worker_url": None,
            "status": None,
            "elapsed_ms": None,
            "error": "the agent did not answer within 1 s",
        }
    ]


@pytest.mark.parametrize(
    ("status", "error", "passed"),
    [
        (200, None, True),
        (404, None, True),
        (499, None, True),
        (500, None, False),
        (503, None, False),
        (None, None, False),
        (200, "read timed out", False),
        (None, "the agent did not answer within 10 s", False),
    ],
)
def test_a_fetch_passes_only_with_an_answer_below_500_and_no_error(status, error, passed):
    result = {"worker_url": "http://127.0.0.1:8082", "status": status, "elapsed_ms": 3.0}
    assert fetch_passed({**result, "error": error}) is passed


@pytest.mark.django_db(transaction=True)
def test_the_answer_posted_by_the_agent_is_the_result(agent_api, registered_agent, sent_preflights):
    agent = registered_agent[0]
    outcome = {}

    def ask() -> None:
        try:
            outcome.update(run_preflight(config_url=URL, timeout_seconds=20))
        finally:
            connection.close()

    asking = threading.Thread(target=ask)
    asking.start()
    # The agent answers the request once it has gone out.
    preflight_id = sent_preflights.wait_for_id()
    body = {
        "id": preflight_id,
        "worker_url": "http://127.0.0.1:8082",
        "status": 200,
        "elapsed_ms": 12.5,
        "error": None,
    }
    response = agent_api.post("/agent/preflight", body, format="json")
    asking.join(20)

    assert response.status_code == 204, response.content
    assert outcome["ok"] is True
    assert outcome["results"] == [
        {
            "agent_id": str(agent.pk),
            "worker_url": "http://127.0.0.1:8082",
            "status": 200,
            "elapsed_ms": 12.5,
            "error": None,
        }
    ]


def test_an_answer_to_an_unknown_preflight_is_404(agent_api):
    body = {
        "id": "0" * 32,
        "worker_url": "http://127.0.0.1:8082",
        "status": 200,
        "elapsed_ms": 1.0,
        "error": None,
    }

    response = agent_api.post("/agent/preflight", body, format="json")

    assert response.status_code == 404


def test_an_agent_that_was_not_asked_cannot_answer(registered_agent):

    cache.set(_request_key("a" * 32), {"config_url": URL, "agents": ["someone-else"]}, 30)

    with pytest.raises(UnknownPreflight):
        record_preflight_result(registered_agent[0], preflight_id="a" * 32, result={})


GOOD_ANSWER = {
    "id": "b" * 32,
    "worker_url": "http://127.0.0.1:8082",
    "status": 200,
    "elapsed_ms": 1.0,
    "error": None,
}


@pytest.mark.parametrize(
    "change",
    [
        {"id": "not-an-id"},
        {"worker_url": "nope"},
        {"status": "200"},
        {"status": None, "error": None},
        {"elapsed_ms": -1},
        {"elapsed_ms": None},
    ],
)
def test_bad_preflight_answer_is_400(agent_api, change):
    response = agent_api.post("/agent/preflight", {**GOOD_ANSWER, **change}, format="json")

    assert response.status_code == 400, response.content


def test_preflight_answer_needs_the_agent_token(api):
    assert api.post("/agent/preflight", GOOD_ANSWER, format="json").status_code == 401
