"""Health-gated rollouts with real processes: a controller, four agents with a worker each (one
of them a canary), upstream stubs, and traffic on every worker's /hit all along. The workers count
their hits per version, the agents report them every second, and the controller's health gate
halts a failing rollout during its canary wave, lets a healthy one complete, and lets one through
whose upstream was failing before it just as much."""

import re
import subprocess
import time
from collections import defaultdict

import pytest
import requests

from apps.agents.models import Agent, AgentHits
from apps.audit.models import AuditEntry
from apps.configs.models import ConfigVersion
from apps.rollouts.models import Rollout
from tests.e2e.conftest import Admin, wait_for_version
from tests.support.polling import Poller
from tests.support.processes import base_env, free_port, manage, wait_until
from tests.support.processes import test_database_url as database_url

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

CANARY_PLAN = {"canary_labels": {"ring": "canary"}, "waves": [100], "min_hits": 20}


class Traffic(Poller):
    """Sends GET /hit to every worker in turn, and notes which versions each one served (the
    X-Config-Version header) and with which statuses."""

    interval = 0.02

    def __init__(self, worker_urls: list[str]) -> None:
        super().__init__()
        self.worker_urls = worker_urls
        self.served: dict[str, set[int]] = defaultdict(set)
        self.last: dict[str, tuple[int, int]] = {}
        self.session = requests.Session()

    def poll(self) -> None:
        for url in self.worker_urls:
            try:
                answer = self.session.get(f"{url}/hit", timeout=5)
            except requests.RequestException:
                continue
            version = int(answer.headers.get("X-Config-Version", 0))
            self.served[url].add(version)
            self.last[url] = (version, answer.status_code)


def start_fleet(stack, first_url: str, controllers: int = 1) -> tuple[Admin, list[str]]:
    """A controller with Redis and four agents with a worker each, the first a canary, all on
    version 1 (`first_url`) and reporting every second: (admin, worker URLs, canary first)."""
    _, redis_url, _ = stack.redis()
    _, url = stack.controller(redis_url, workers=controllers)
    admin = Admin(url)
    assert admin.create(first_url).status_code == 201
    workers = [stack.worker()[1] for _ in range(4)]
    for index, worker in enumerate(workers):
        stack.agent(
            url,
            [worker],
            f"agent-{index}",
            AGENT_LABELS="ring=canary" if index == 0 else "ring=main",
            AGENT_HEARTBEAT_SECONDS="1",
        )
    wait_for_version(workers, 1, timeout=60)
    wait_until(
        lambda: Agent.objects.filter(labels={"ring": "canary"}).count() == 1,
        timeout=20,
        message="the canary registered with its label",
    )
    return admin, workers


def totals(version: int) -> tuple[int, int]:
    rows = AgentHits.objects.filter(version=version)
    return sum(r.ok for r in rows), sum(r.failed for r in rows)


def publish(admin: Admin, config_url: str, plan: dict) -> requests.Response:
    return admin.session.post(
        f"{admin.url}/config/admin",
        json={"config_url": config_url, "pooling_interval": 30, "rollout": plan},
        timeout=60,
    )


def rollout_state(version: int) -> str | None:
    return Rollout.objects.filter(version=version).values_list("state", flat=True).first()


def rollout_status() -> subprocess.CompletedProcess:
    return subprocess.run(
        manage("rollout_status"),
        env=base_env(DATABASE_URL=database_url()),
        capture_output=True,
        text=True,
        timeout=60,
    )


def hits_served(worker_url: str) -> dict:
    return requests.get(f"{worker_url}/health", timeout=5).json()["hits"]


def test_a_failing_canary_halts_the_rollout_and_every_worker_goes_back(stack, upstream, admin_user):
    admin, workers = start_fleet(stack, upstream.url("/text?v1"), controllers=2)
    canary, others = workers[0], workers[1:]

    with Traffic(workers) as traffic:
        wait_until(lambda: totals(1)[0] >= 40, timeout=30, message="v1's hits at the controller")
        # A long bake: only the health gate can end the canary wave.
        answer = publish(admin, upstream.url("/broken?v2"), {**CANARY_PLAN, "bake_seconds": 600})
        assert answer.status_code == 201, answer.text
        published = time.monotonic()
        wait_until(lambda: rollout_state(2) == "halted", timeout=45, message="the halt")
        halted_after = time.monotonic() - published
        wait_for_version(workers, 3, timeout=10)
        wait_until(
            lambda: all(traffic.last.get(w) == (3, 200) for w in workers),
            timeout=10,
            message="every worker serving v3 with the previous content",
        )

    print(f"halted {halted_after:.1f} s after the publish")
    # The canary served the bad version; no other worker ever did.
    assert 2 in traffic.served[canary]
    for worker in others:
        assert traffic.served[worker] <= {1, 3}, (worker, traffic.served[worker])
        assert "2" not in hits_served(worker)
    assert hits_served(canary)["2"]["failed"] >= 1
    assert hits_served(canary)["2"]["ok"] == 0

    rollout = Rollout.objects.get(version=2)
    assert rollout.wave == 0
    assert re.fullmatch(
        r"failure rate 1\.00 over \d+ hits > 0\.20 \(previous version: 0\.00 over \d+ hits\)",
        rollout.reason,
    ), rollout.reason
    newest = ConfigVersion.objects.get(version=3)
    assert (newest.config_url, newest.rolled_back_from) == (upstream.url("/text?v1"), 1)
    # Two controller processes wrote heartbeats; the halt happened once.
    halts = list(AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_HALTED))
    assert len(halts) == 1
    assert (halts[0].actor, halts[0].detail["reason"]) == ("system", rollout.reason)
    assert AuditEntry.objects.filter(action=AuditEntry.CONFIG_ROLLED_BACK).count() == 1

    status = rollout_status()
    assert status.returncode == 1
    assert f"the rollout was halted: {rollout.reason}" in status.stdout
    metrics = requests.get(f"{admin.url}/metrics", timeout=10).text
    assert 'controller_rollouts_halted_total{state="halted"} 1.0' in metrics


def test_a_healthy_rollout_completes_after_a_refused_preflight(stack, upstream, admin_user):
    admin, workers = start_fleet(stack, upstream.url("/text?v1"))
    closed = f"http://127.0.0.1:{free_port()}/"

    with Traffic(workers) as traffic:
        # A plan's pre-flight of a closed port: 422 with every agent's error, nothing stored.
        refused = publish(admin, closed, {**CANARY_PLAN, "preflight": True})
        assert refused.status_code == 422, refused.text
        results = refused.json()["preflight"]["results"]
        assert refused.json()["preflight"]["ok"] is False
        assert len(results) == 3
        assert all(r["status"] is None and "unreachable" in r["error"] for r in results)
        assert admin.session.get(f"{admin.url}/config/admin", timeout=10).json()["version"] == 1
        assert not Rollout.objects.exists()
        assert AuditEntry.objects.filter(action=AuditEntry.PREFLIGHT_REFUSED).count() == 1

        # A healthy URL, pre-flighted too: it goes to the canary, then to everyone.
        plan = {**CANARY_PLAN, "bake_seconds": 2, "preflight": True}
        answer = publish(admin, upstream.url("/json"), plan)
        assert answer.status_code == 201, answer.text
        wait_until(lambda: rollout_state(2) == "completed", timeout=60, message="completion")
        wait_for_version(workers, 2, timeout=20)
        wait_until(lambda: totals(2)[0] >= 20, timeout=20, message="v2's hits")

    assert all(traffic.last[w] == (2, 200) for w in workers)
    rollout = admin.session.get(f"{admin.url}/config/admin/rollout", timeout=10).json()
    assert (rollout["state"], rollout["reason"]) == ("completed", "")
    assert rollout["health"]["version"]["failed"] == 0
    assert not AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_HALTED).exists()
    assert ConfigVersion.objects.count() == 2
    assert rollout_status().returncode == 0


def test_an_upstream_that_failed_before_does_not_halt_a_rollout_that_does_no_worse(
    stack, upstream, admin_user
):
    admin, workers = start_fleet(stack, upstream.url("/broken?v1"))

    with Traffic(workers):
        wait_until(lambda: totals(1)[1] >= 40, timeout=30, message="v1's failures")
        # The gate judges v2 once it has min_hits, well within the two bakes of the rollout.
        plan = {**CANARY_PLAN, "bake_seconds": 4, "min_hits": 10}
        answer = publish(admin, upstream.url("/broken?v2"), plan)
        assert answer.status_code == 201, answer.text
        wait_until(lambda: rollout_state(2) == "completed", timeout=60, message="completion")
        wait_for_version(workers, 2, timeout=20)

    rollout = Rollout.objects.get(version=2)
    assert re.fullmatch(
        r"failure rate 1\.00 over \d+ hits > 0\.20, but not halted: the previous version failed "
        r"as often or more \(1\.00 over \d+ hits\)",
        rollout.reason,
    ), rollout.reason
    assert not AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_HALTED).exists()
    assert ConfigVersion.objects.count() == 2
