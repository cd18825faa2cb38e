"""Two applications in two environments on one controller, with real processes: an agent and a
worker in each of the four scopes, each agent registered with a token of its scope. A change in
one scope reaches its worker only; a rollout in one runs its wave while another takes a direct
change; an agent's token reads its own scope and nothing of another; and the seed's routes still
act on the default scope as they always did."""

import json

import pytest
import requests

from apps.scopes.services import default_scope
from tests.e2e.conftest import Admin, worker_version
from tests.support.processes import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

SCOPES = [
    ("payments", "staging"),
    ("payments", "production"),
    ("search", "staging"),
    ("search", "production"),
]


def prefix(application: str, environment: str) -> str:
    return f"/apps/{application}/envs/{environment}"


def served_uuid(worker_url: str) -> str | None:
    return requests.get(f"{worker_url}/config", timeout=5).json().get("uuid")


@pytest.mark.timeout(240)
def test_four_scopes_on_one_controller_each_reach_their_own_worker_only(
    stack, upstream, admin_user, tmp_path
):
    default_scope()  # the migration made it; a transactional test before may have flushed it
    _, redis_url, _ = stack.redis()
    _, url = stack.controller(redis_url)
    admin = Admin(url)
    api = admin.session
    assert api.post(f"{url}/envs", json={"name": "staging", "order": -10}).status_code == 201
    for application in ("payments", "search"):
        assert api.post(f"{url}/apps", json={"name": application}).status_code == 201

    workers, uuids, agent_dirs = {}, {}, {}
    for scope in SCOPES:
        created = api.post(
            f"{url}{prefix(*scope)}/config/admin",
            json={"config_url": upstream.url(f"/text?{'-'.join(scope)}"), "pooling_interval": 30},
        )
        assert created.status_code == 201, created.text
        assert created.json()["version"] == 1
        uuids[scope] = created.json()["uuid"]
        issued = api.post(
            f"{url}/agent/admin", json={"application": scope[0], "environment": scope[1]}
        )
        assert issued.status_code == 201, issued.text
        workers[scope] = stack.worker(WORKER_BLOCK_PRIVATE_UPSTREAMS="0")[1]
        agent_dirs[scope] = tmp_path / "-".join(scope)
        stack.agent(
            url,
            [workers[scope]],
            "-".join(scope),
            registration_token=issued.json()["registration_token"],
            AGENT_HEARTBEAT_SECONDS="1",
        )
    # Every worker holds its own scope's version 1: the same number, four contents.
    wait_until(
        lambda: all(served_uuid(workers[scope]) == uuids[scope] for scope in SCOPES),
        timeout=60,
        message="each worker on its scope's version 1",
    )
    upstream_answer = requests.get(f"{workers[SCOPES[0]]}/hit", timeout=10)
    assert upstream_answer.status_code == 200

    # A change in payments/staging reaches its worker only.
    changed = api.put(
        f"{url}{prefix('payments', 'staging')}/config/admin",
        json={"config_url": upstream.url("/text?payments-staging-2")},
    )
    assert changed.status_code == 200 and changed.json()["version"] == 2
    wait_until(
        lambda: served_uuid(workers[("payments", "staging")]) == changed.json()["uuid"],
        timeout=20,
        message="payments/staging on version 2",
    )
    for scope in SCOPES[1:]:
        assert worker_version(workers[scope]) == 1, scope
        assert served_uuid(workers[scope]) == uuids[scope], scope

    # A rollout in payments/production runs its wave (and bakes) while search/production takes
    # a direct change.
    plan = {"waves": [100], "bake_seconds": 60}
    rolling = api.put(
        f"{url}{prefix('payments', 'production')}/config/admin",
        json={"config_url": upstream.url("/text?payments-production-2"), "rollout": plan},
    )
    assert rolling.status_code == 200, rolling.text
    direct = api.put(
        f"{url}{prefix('search', 'production')}/config/admin",
        json={"config_url": upstream.url("/text?search-production-2")},
    )
    assert direct.status_code == 200 and direct.json()["version"] == 2
    wait_until(
        lambda: (
            worker_version(workers[("payments", "production")]) == 2
            and worker_version(workers[("search", "production")]) == 2
        ),
        timeout=30,
        message="both production workers on their version 2",
    )
    rollout_url = f"{url}{prefix('payments', 'production')}/config/admin/rollout"
    # Its agent reports the version applied; the rollout still bakes.
    wait_until(
        lambda: api.get(rollout_url).json()["agents_applied"] == 1,
        timeout=20,
        message="payments/production's agent reported version 2",
    )
    rollout = api.get(rollout_url).json()
    assert (rollout["state"], rollout["version"], rollout["agents_total"]) == ("rolling", 2, 1)
    assert api.get(f"{url}{prefix('search', 'production')}/config/admin/rollout").status_code == 404
    assert worker_version(workers[("search", "staging")]) == 1

    # An agent of search/staging reads its own scope, and nothing of payments.
    credentials = json.loads((agent_dirs[("search", "staging")] / "credentials.json").read_text())
    agent = requests.Session()
    agent.headers["Authorization"] = f"Bearer {credentials['agent_token']}"
    own = agent.get(f"{url}/config/version", timeout=5).json()
    assert (own["version"], own["uuid"]) == (1, uuids[("search", "staging")])
    for path in ("config/admin", "config/admin/history", "agents", "config/admin/changes"):
        answer = agent.get(f"{url}{prefix('payments', 'staging')}/{path}", timeout=5)
        assert answer.status_code in (401, 403), (path, answer.status_code)
    answer = agent.post(f"{url}{prefix('payments', 'staging')}/agent/admin", json={}, timeout=5)
    assert answer.status_code in (401, 403)

    # The seed's routes act on the default scope, untouched by all of the above.
    assert api.get(f"{url}/config/admin").status_code == 404
    assert admin.create(upstream.url("/text?default")).json()["version"] == 1
    assert api.get(f"{url}/config/admin").json()["version"] == 1
    assert api.get(f"{url}/agents").json()["results"] == []
    assert worker_version(workers[("search", "staging")]) == 1
