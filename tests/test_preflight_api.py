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


# Who decides: a majority, and no failure ---------------------------------------------------


def live_agents(count: int) -> list[Agent]:
    from apps.agents.services import issue_registration_token, register_agent

    return [register_agent(token=issue_registration_token()[0])[0] for _ in range(count)]


@pytest.fixture
def answer_when_asked(monkeypatch):
    """answer(answers): the agents in `answers` ({agent: result}) answer the next pre-flights
    as their POST /agent/preflight would, the moment the request goes out; the others stay
    silent."""
    from apps.configs import preflight

    def answer(answers: dict) -> None:
        def publish(request: dict) -> None:
            for agent, result in answers.items():
                record_preflight_result(agent, preflight_id=request["id"], result=result)

        monkeypatch.setattr(preflight.notifications, "publish_preflight", publish)

    return answer


OK_200 = {"worker_url": "http://127.0.0.1:8082", "status": 200, "elapsed_ms": 5.0, "error": None}


def test_one_agents_ok_is_not_enough_when_the_others_do_not_answer(db, answer_when_asked):
    fake, *silent = live_agents(3)
    answer_when_asked({fake: OK_200})

    answer = run_preflight(config_url=URL, agents=3, timeout_seconds=1)

    assert answer["ok"] is False
    # Every agent asked is listed, the silent ones with why.
    assert {r["agent_id"] for r in answer["results"]} == {str(a.pk) for a in (fake, *silent)}
    assert sorted(r["status"] is None for r in answer["results"]) == [False, True, True]


def test_a_majority_of_oks_passes_and_one_failure_fails_it(db, answer_when_asked):
    first, second, third = live_agents(3)
    answer_when_asked({first: OK_200, second: OK_200})
    assert run_preflight(config_url=URL, agents=3, timeout_seconds=1)["ok"] is True

    refused = {**OK_200, "status": None, "error": "upstream refused"}
    answer_when_asked({first: OK_200, second: OK_200, third: refused})
    assert run_preflight(config_url=URL, agents=3, timeout_seconds=5)["ok"] is False
    # A 5xx is a failure too.
    answer_when_asked({first: OK_200, second: OK_200, third: {**OK_200, "status": 503}})
    assert run_preflight(config_url=URL, agents=3, timeout_seconds=5)["ok"] is False


def test_an_agents_error_names_no_address_the_url_resolved_to(db, answer_when_asked):
    (agent,) = live_agents(1)
    error = (
        "worker http://10.0.0.3:8082: upstream http://intranet.example/ is unreachable: "
        "Failed to connect to 10.1.2.3 port 80 after 0 ms; also fd00::17 and 127.0.0.1"
    )
    answer_when_asked({agent: {**OK_200, "status": None, "error": error}})

    answer = run_preflight(config_url="http://intranet.example/", agents=1, timeout_seconds=5)

    shown = answer["results"][0]["error"]
    for address in ("10.1.2.3", "fd00::17", "127.0.0.1", "10.0.0.3"):
        assert address not in shown
    assert "intranet.example" in shown and "[address]" in shown


def test_an_address_written_in_the_url_itself_stays_in_the_error(db, answer_when_asked):
    (agent,) = live_agents(1)
    error = "upstream http://10.9.8.7/ is unreachable: Failed to connect to 10.9.8.7 port 80"
    answer_when_asked({agent: {**OK_200, "status": None, "error": error}})

    answer = run_preflight(config_url="http://10.9.8.7/", agents=1, timeout_seconds=5)

    assert answer["results"][0]["error"] == error


def test_preflights_beyond_the_rate_per_user_are_429_with_retry_after(
    admin_api, registered_agent, settings, monkeypatch
):
    from apps.accounts.models import User
    from apps.accounts.services import issue_tokens
    from apps.configs import preflight

    settings.PREFLIGHT_RATE_PER_MINUTE = 2
    monkeypatch.setattr(preflight, "clock", lambda: 1_000_000 * 60 + 15.0)
    cache.clear()
    # No agent is live: each pre-flight is a quick 409, and still counts.
    Agent.objects.update(last_seen=None)
    body = {"config_url": URL}
    statuses = [
        admin_api.post("/config/admin/preflight", body, format="json").status_code for _ in range(2)
    ]
    refused = admin_api.post("/config/admin/preflight", body, format="json")

    assert statuses == [409, 409]
    assert refused.status_code == 429
    assert refused["Retry-After"] == "45"
    assert "at most 2 a minute" in refused.json()["detail"]
    # Another user has a minute of their own.
    other = User.objects.create_superuser(email="other@example.com", password=None)
    admin_api.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_tokens(other).access_token}")
    assert admin_api.post("/config/admin/preflight", body, format="json").status_code == 409
    # The next minute takes pre-flights again.
    monkeypatch.setattr(preflight, "clock", lambda: 1_000_001 * 60 + 1.0)
    assert admin_api.post("/config/admin/preflight", body, format="json").status_code == 409
