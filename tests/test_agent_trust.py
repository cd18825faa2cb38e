"""A process trusts its memory of an active agent's token beyond AGENT_AUTH_CACHE_SECONDS only
while it reads the revocations at least that often: a fleet reporting every 10 s then costs no
token query per report, and a revocation made by another process still stops the token within
AGENT_AUTH_CACHE_SECONDS."""

import secrets

import pytest
from django.utils import timezone

from apps.agents import auth as agent_auth
from apps.agents.models import Agent
from controller_site.tokens import AGENT_PREFIX, hash_token

pytestmark = pytest.mark.django_db

HEARTBEAT = {"applied_version": 1, "workers": []}


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(agent_auth, "clock", lambda: now[0])
    return now


def test_a_swept_memory_serves_a_known_agent_without_a_query_after_the_cache_time(
    registered_agent, agent_api, clock, django_assert_num_queries
):
    agent, _ = registered_agent
    agent_auth.sweep_revocations()  # a process's first sweep starts from an empty memory
    assert agent_api.post("/agent/heartbeat", HEARTBEAT, format="json").status_code == 204
    for _ in range(20):  # 10 s of sweeps every half second
        clock[0] += 0.5
        agent_auth.sweep_revocations()
    known, remembered = agent_auth.remembered_agent(agent.token_hash)
    assert known and remembered.pk == agent.pk
    with django_assert_num_queries(0):
        assert agent_auth.find_agent(registered_agent[1]).pk == agent.pk


def test_a_revocation_by_another_process_is_honoured_within_a_second_while_swept(
    registered_agent, agent_api, clock
):
    agent, _ = registered_agent
    agent_auth.sweep_revocations()
    assert agent_api.get("/config/version").status_code == 200
    clock[0] += 5  # long past the cache time, kept by the sweeps
    agent_auth.sweep_revocations()
    assert agent_api.get("/config/version").status_code == 200
    # Another process revokes: the row changes, but this process's memory is not told.
    Agent.objects.filter(pk=agent.pk).update(revoked_at=timezone.now())
    clock[0] += 0.5
    agent_auth.sweep_revocations()
    assert agent_api.get("/config/version").status_code == 401
    assert agent_api.post("/agent/heartbeat", HEARTBEAT, format="json").status_code == 401


def test_without_sweeps_the_memory_lapses_after_the_cache_time(registered_agent, agent_api, clock):
    agent, _ = registered_agent
    agent_auth.sweep_revocations()
    assert agent_api.get("/config/version").status_code == 200
    Agent.objects.filter(pk=agent.pk).update(revoked_at=timezone.now())
    # No sweep since: past AGENT_AUTH_CACHE_SECONDS the memory is not trusted any more.
    clock[0] += 1.1
    assert agent_api.get("/config/version").status_code == 401


def test_a_sweep_after_a_pause_drops_the_whole_memory(registered_agent, agent_api, clock):
    agent, _ = registered_agent
    agent_auth.sweep_revocations()
    assert agent_api.get("/config/version").status_code == 200
    clock[0] += 120  # the database was unreachable: revocations older than a minute unseen
    agent_auth.sweep_revocations()
    assert agent_auth.remembered_agent(agent.token_hash) == (False, None)


def test_an_unknown_token_is_not_trusted_past_the_cache_time(agent_api, clock):
    agent_auth.sweep_revocations()
    agent_auth.find_agents(["0" * 64])
    clock[0] += 0.6
    agent_auth.sweep_revocations()
    clock[0] += 0.6
    assert agent_auth.remembered_agent("0" * 64) == (False, None)


def random_digests(count: int) -> list[str]:
    return [hash_token(AGENT_PREFIX + secrets.token_urlsafe(32)) for _ in range(count)]


def test_a_flood_of_unknown_tokens_does_not_make_the_memory_forget_known_agents(
    registered_agent, clock, django_assert_num_queries
):
    agent, token = registered_agent
    agent_auth.sweep_revocations()
    assert agent_auth.find_agent(token).pk == agent.pk
    # More made-up tokens than the memory holds, in the batches the watch looks them up in.
    for _ in range(12):
        agent_auth.find_agents(random_digests(5_000))

    # It should still know the agent, and answer for it without a query.
    with django_assert_num_queries(0):
        assert agent_auth.find_agent(token).pk == agent.pk


def test_a_full_memory_forgets_the_agent_least_recently_seen_and_keeps_the_others(
    monkeypatch, clock
):
    monkeypatch.setattr(agent_auth, "_KNOWN_LIMIT", 3)
    agent_auth.sweep_revocations()
    agents = {digest: Agent(token_hash=digest) for digest in random_digests(4)}
    first, second, third, fourth = agents
    agent_auth._remember({digest: agents[digest] for digest in (first, second, third)})
    clock[0] += 0.1
    assert agent_auth.remembered_agent(first)[0]  # seen again: now the most recent

    agent_auth._remember({fourth: agents[fourth]})

    # It should forget `second` alone, the one least recently seen.
    assert agent_auth.remembered_agent(second) == (False, None)
    for digest in (first, third, fourth):
        known, remembered = agent_auth.remembered_agent(digest)
        assert known and remembered is agents[digest]
