"""Write access to Redis, tried on a served controller: what it can no longer do.

The attacker here holds a Redis client and nothing else: it writes the cache key the controller
reads on every agent request, and publishes on the channel the watch hubs listen to."""

import json
import os
import pickle
import threading
import time

import pytest
import redis
import requests

from apps.agents.services import issue_registration_token, register_agent
from tests.e2e.conftest import Admin
from tests.e2e.security import record_attack
from tests.support.processes import server_errors, wait_until, watches_held

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

URL = "http://upstream.example/task"
FORGED_URL = "https://attacker.example/steer"
# The names a controller with the default settings uses on Redis database 0.
STATE_KEY = "dcs:2:config:current"
CHANNEL = "dcs:0:config-changes"


class Planted:
    """A pickle that, once loaded, creates a file: proof that it ran."""

    def __init__(self, proof: str) -> None:
        self.proof = proof

    def __reduce__(self):
        return (os.system, (f"id > {self.proof}",))


def agent_token() -> tuple[str, str]:
    token, _ = issue_registration_token()
    agent, agent_token = register_agent(token=token)
    return str(agent.pk), agent_token


def refused_notifications(url: str) -> int:
    text = requests.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("controller_notifications_refused_total"):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def test_a_pickle_planted_in_the_cache_is_never_loaded(stack, admin_user, tmp_path):
    _, redis_url, _ = stack.redis()
    _, url = stack.controller(redis_url)
    admin = Admin(url)
    assert admin.create(URL).status_code == 201
    _, token = agent_token()
    proof = tmp_path / "ran"
    attacker = redis.Redis.from_url(redis_url)
    # Every spelling of the key a controller of this or an older release reads.
    for key in (STATE_KEY, "dcs:1:config:current"):
        attacker.set(key, pickle.dumps(Planted(str(proof))))

    answers = [
        requests.get(
            f"{url}/config/agent", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        for _ in range(3)
    ]
    watch = requests.get(
        f"{url}/config/version", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )

    assert not proof.exists(), proof.read_text()
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert answers[0].json()["config_url"] == URL
    assert watch.status_code == 200
    assert watch.json()["config_url"] == URL
    assert server_errors(url) == 0
    record_attack(
        "redis-planted-pickle",
        "the pickle was never loaded (nothing ran); it read as a cache miss and the agents got "
        "the stored config from the database",
        config_agent=answers[0].status_code,
        config_version=watch.status_code,
        code_ran=proof.exists(),
    )


def test_a_forged_notification_changes_nothing_agents_receive(stack, admin_user):
    _, redis_url, _ = stack.redis()
    controller, url = stack.controller(redis_url)
    admin = Admin(url)
    assert admin.create(URL).status_code == 201
    agent_id, token = agent_token()
    results: list = []

    def hold() -> None:
        answer = requests.get(
            f"{url}/config/version",
            params={"version": 1, "wait": 20},
            headers={"Authorization": f"Bearer {token}"},
            timeout=40,
        )
        results.append((answer.status_code, answer.json()))

    thread = threading.Thread(target=hold)
    thread.start()
    wait_until(lambda: watches_held(url) == 1, message="the watch held")
    attacker = redis.Redis.from_url(redis_url)
    forged = [
        # A new version with the attacker's content, as the channel carried it before.
        {"type": "config", "version": 1004, "pooling_interval": 30, "config_url": FORGED_URL},
        # The same with a seal the attacker made up.
        {"type": "config", "version": 1005, "config_url": FORGED_URL, "mac": "0" * 64},
        # A pre-flight asking the agent's workers to fetch the attacker's URL.
        {
            "type": "preflight",
            "id": "f" * 32,
            "config_url": FORGED_URL,
            "timeout_seconds": 10,
            "agent_ids": [agent_id],
            "expires_at": time.time() + 60,
        },
        # A revocation of an agent that is not revoked.
        {"type": "revoked", "agent_id": agent_id},
    ]
    listeners = [attacker.publish(CHANNEL, json.dumps(message)) for message in forged]
    assert listeners[0] >= 1  # the hub heard them
    time.sleep(2)  # past the recheck the refusals ask for

    still_held = watches_held(url)
    changed = admin.change(pooling_interval=77)
    thread.join(30)

    assert still_held == 1
    assert changed.status_code == 200
    assert results and results[0][0] == 200
    answer = results[0][1]
    assert answer["version"] == 2 and answer["config_url"] == URL
    assert "preflight" not in answer
    assert refused_notifications(url) == len(forged)
    assert "without a valid seal" in controller.output()
    record_attack(
        "redis-forged-notification",
        "every forged message (config, made-up seal, pre-flight, revocation) was refused and "
        "logged; the held watch stayed held and then got the next real change",
        refused=refused_notifications(url),
        watch_answer_version=answer["version"],
    )
