"""Agent labels through real processes: an agent started as a canary (`--label ring=canary`,
a heartbeat that says so) does not become one; the operator's PATCH /agents/{id} does."""

import pytest
import requests

from apps.agents.models import Agent
from tests.e2e.conftest import Admin, wait_for_version, worker_version
from tests.e2e.security import record_attack
from tests.support.processes import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

PLAN = {"canary_labels": {"ring": "canary"}, "waves": [100], "bake_seconds": 600}


def ignored_labels(url: str) -> float:
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("controller_heartbeat_labels_ignored_total "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.timeout(180)
def test_an_agent_cannot_make_itself_a_canary(stack, upstream, admin_user):
    _, redis_url, _ = stack.redis()
    _, url = stack.controller(redis_url)
    admin = Admin(url)
    assert admin.create(upstream.url("/text?v=1")).status_code == 201
    _, worker = stack.worker(WORKER_BLOCK_PRIVATE_UPSTREAMS="0")
    # Started as a canary, with a registration token that binds no label and takes none of
    # the agent's: it registers, and says "ring=canary" in every heartbeat.
    stack.agent(
        url,
        [worker],
        "self-labelled",
        allow_agent_labels=False,
        AGENT_LABELS="ring=canary",
        AGENT_HEARTBEAT_SECONDS="1",
    )
    wait_for_version([worker], 1, timeout=60)
    wait_until(lambda: ignored_labels(url) >= 2, timeout=30, message="heartbeats with labels")
    agent = Agent.objects.get()
    assert agent.labels == {}

    staged = admin.session.post(
        f"{url}/config/admin",
        json={"config_url": upstream.url("/text?v=2"), "pooling_interval": 30, "rollout": PLAN},
        timeout=30,
    )
    assert staged.status_code == 201, staged.text
    # Long enough for a watch, a heartbeat and its batch: the canaries' version never comes.
    seen_before = ignored_labels(url)
    wait_until(lambda: ignored_labels(url) >= seen_before + 3, timeout=30, message="heartbeats")
    assert worker_version(worker) == 1
    listed = admin.session.get(f"{url}/agents", timeout=10).json()["results"]
    assert [(a["labels"], a["target_version"]) for a in listed] == [({}, 1)]

    # The operator makes it a canary: its held watch is answered with the canaries' version.
    changed = admin.session.patch(
        f"{url}/agents/{agent.pk}", json={"labels": {"ring": "canary"}}, timeout=10
    )
    assert changed.status_code == 200, changed.text
    took = wait_for_version([worker], 2, timeout=30)
    record_attack(
        "agent-self-labels-canary",
        "the agent registered without its labels and its heartbeats' ring=canary changed "
        "nothing: its worker stayed on the previous version while the canaries got the new "
        "one; the operator's PATCH /agents/{id} made it a canary",
        heartbeats_with_labels_ignored=int(ignored_labels(url)),
        worker_version_before_patch=1,
        seconds_to_canary_version_after_patch=round(took, 1),
    )
