"""Health-gated rollouts with real processes: a controller, four agents with a worker each (one
of them a canary), upstream stubs, and traffic on every worker's /hit all along. The workers count
their hits per version, the agents report them every second, and the controller's health gate
halts a failing rollout during its canary wave, lets a healthy one complete, and lets one through
whose upstream was failing before it just as much.

Then the gate against one stolen agent token: ten canaries (nine real agents, sharing two
workers, and the token's holder), where the lying one can neither halt a healthy rollout nor keep
a failing one going; an agent the rollout has not reached, or hits sent for versions before they
exist, change nothing."""

import re
import subprocess
import time
from collections import defaultdict

import pytest
import requests

from apps.agents.models import Agent, AgentHits
from apps.agents.services import issue_registration_token
from apps.audit.models import AuditEntry
from apps.configs.models import ConfigVersion
from apps.rollouts.models import Rollout
from tests.e2e.conftest import Admin, start_canary_fleet, wait_for_version
from tests.e2e.security import record_attack
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


def stolen_token(controller_url: str, labels: dict) -> tuple[str, str]:
    """(agent id, agent token) of an agent the operator registered with `labels`: what an
    attacker holds who stole one agent's credentials."""
    answer = requests.post(
        f"{controller_url}/agent/register",
        json={"name": "stolen"},
        headers={"Authorization": f"Bearer {issue_registration_token(labels=labels)[0]}"},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["labels"] == labels
    return answer.json()["agent_id"], answer.json()["agent_token"]


def lie(controller_url: str, token: str, applied: int, hits: list[dict]) -> None:
    answer = requests.post(
        f"{controller_url}/agent/heartbeat",
        json={"applied_version": applied, "workers": [], "hits": hits},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 204, answer.text


def rejected_hits(controller_url: str, reason: str) -> float:
    text = requests.get(f"{controller_url}/metrics", timeout=10).text
    found = re.search(
        rf'^controller_heartbeat_hits_rejected_total\{{reason="{reason}"\}} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


def controller_log(stack) -> str:
    return "".join(p.output() for p in stack.processes if p.name == "controller")


def start_fleet(stack, first_url: str, controllers: int = 1) -> tuple[Admin, list[str]]:
    """A controller with Redis and four agents with a worker each, the first a canary, all on
    version 1 (`first_url`) and reporting every second: (admin, worker URLs, canary first)."""
    _, redis_url, _ = stack.redis()
    _, url = stack.controller(redis_url, workers=controllers)
    admin = Admin(url)
    assert admin.create(first_url).status_code == 201
    return admin, start_canary_fleet(stack, url)


def totals(version: int) -> tuple[int, int]:
    rows = AgentHits.objects.filter(version=version)
    return sum(r.ok for r in rows), sum(r.failed for r in rows)


def canary_hits(version: int) -> AgentHits:
    return AgentHits.objects.filter(agent__labels={"ring": "canary"}, version=version).first() or (
        AgentHits()
    )


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

    # A stolen agent token sends, before they exist, a billion good hits for each of the next
    # 100 versions: were they kept, the canary's failures would be a rate of nothing.
    thief, token = stolen_token(admin.url, {"ring": "main"})
    lie(admin.url, token, 1, [{"version": v, "ok": 10**9, "failed": 0} for v in range(2, 102)])
    # Answered at once, written with the next batch.
    wait_until(
        lambda: rejected_hits(admin.url, "future_version") == 100,
        timeout=10,
        message="the 100 versions' hits dropped",
    )
    assert not AgentHits.objects.filter(agent_id=thief).exists()

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
        r"1 of 1 agents with at least 20 hits of v2 fail more than 0\.20 of them \(the worst "
        r"1\.00 over \d+ hits\)",
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
    assert f"agent {thief} reported hits of v101, above the current version" in controller_log(
        stack
    )
    record_attack(
        "gate-disabled-in-advance",
        "the next 100 versions' hits dropped as above the current version, counted and logged "
        "naming the agent; the later rollout's failing canary halted it",
        rejected=int(rejected_hits(admin.url, "future_version")),
        halted_after_s=round(halted_after, 1),
    )


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
        thief, token = stolen_token(admin.url, {"ring": "main"})
        plan = {**CANARY_PLAN, "bake_seconds": 2, "preflight": True}
        answer = publish(admin, upstream.url("/json"), plan)
        assert answer.status_code == 201, answer.text
        # During the canary wave, an agent it has not reached claims a billion failures.
        lie(admin.url, token, 2, [{"version": 2, "ok": 0, "failed": 10**9}])
        wait_until(
            lambda: rejected_hits(admin.url, "not_targeted") == 1,
            timeout=10,
            message="the untargeted agent's hits dropped",
        )
        assert rollout_state(2) == "rolling"
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
    assert not AgentHits.objects.filter(agent_id=thief, version=2, failed__gt=0).exists()
    assert f"agent {thief} reported hits of v2, which the rollout has not given it" in (
        controller_log(stack)
    )
    record_attack(
        "gate-halt-by-untargeted-agent",
        "the hits dropped (the rollout had not reached the agent), counted and logged naming "
        "the agent; the rollout completed",
        rejected=int(rejected_hits(admin.url, "not_targeted")),
        state=rollout["state"],
    )


def test_an_upstream_that_failed_before_does_not_halt_a_rollout_that_does_no_worse(
    stack, upstream, admin_user
):
    admin, workers = start_fleet(stack, upstream.url("/broken?v1"))

    with Traffic(workers):
        # Each agent is compared with its own hits of the previous version: the canary's too.
        wait_until(
            lambda: canary_hits(1).failed >= 20, timeout=30, message="the canary's v1 failures"
        )
        # The gate judges v2 once it has min_hits, well within the two bakes of the rollout.
        plan = {**CANARY_PLAN, "bake_seconds": 4, "min_hits": 10}
        answer = publish(admin, upstream.url("/broken?v2"), plan)
        assert answer.status_code == 201, answer.text
        wait_until(lambda: rollout_state(2) == "completed", timeout=60, message="completion")
        wait_for_version(workers, 2, timeout=20)

    rollout = Rollout.objects.get(version=2)
    assert re.fullmatch(
        r"\d of \d agents with at least 10 hits of v2 fail more than 0\.20 of them \(the worst "
        r"1\.00 over \d+ hits\), but not halted: each failed as often or more with the "
        r"previous version",
        rollout.reason,
    ), rollout.reason
    assert not AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_HALTED).exists()
    assert ConfigVersion.objects.count() == 2


# One stolen agent token among ten canaries ---------------------------------------------------

TEN_CANARIES_PLAN = {"canary_labels": {"ring": "canary"}, "waves": [100], "min_hits": 20}


def start_ten_canaries(stack, upstream, failing: int) -> tuple[Admin, list[str], str, str]:
    """A controller, nine canary agents reporting every second and a tenth canary whose token an
    attacker holds, all on version 1. The first `failing` agents share a worker that refuses
    upstream bodies over 256 bytes, the others a worker with the default cap (agents may share
    a worker: each reports its hits). (admin, the two workers, the liar's id and token.)"""
    _, redis_url, _ = stack.redis()
    _, url = stack.controller(redis_url)
    admin = Admin(url)
    assert admin.create(upstream.url("/text?v1")).status_code == 201
    capped = stack.worker(WORKER_MAX_BODY_BYTES="256")[1]
    roomy = stack.worker()[1]
    for index in range(9):
        stack.agent(
            url,
            [capped if index < failing else roomy],
            f"canary-{index}",
            AGENT_LABELS="ring=canary",
            AGENT_HEARTBEAT_SECONDS="1",
        )
    liar, token = stolen_token(url, {"ring": "canary"})
    wait_for_version([capped, roomy], 1, timeout=60)
    wait_until(
        lambda: Agent.objects.filter(labels={"ring": "canary"}, applied_version=1).count() == 9,
        timeout=30,
        message="the nine canaries on v1",
    )
    return admin, [capped, roomy], liar, token


def test_one_lying_canary_can_neither_halt_a_healthy_rollout_nor_keep_a_failing_one_going(
    stack, upstream, admin_user
):
    admin, workers, liar, token = start_ten_canaries(stack, upstream, failing=7)

    with Traffic(workers) as traffic:
        # A healthy version. First, before any real canary has its 20 hits, the liar reports a
        # billion failures.
        answer = publish(admin, upstream.url("/json"), {**TEN_CANARIES_PLAN, "bake_seconds": 8})
        assert answer.status_code == 201, answer.text
        lie(admin.url, token, 2, [{"version": 2, "ok": 0, "failed": 10**9}])
        assert rollout_state(2) == "rolling"
        wait_until(lambda: rollout_state(2) == "completed", timeout=90, message="completion")
        healthy = Rollout.objects.get(version=2)

        # A failing version: 2000 bytes, over the cap of the worker seven canaries share. The
        # liar reports a billion successes.
        plan = {**TEN_CANARIES_PLAN, "bake_seconds": 600}
        answer = publish(admin, upstream.url("/big?2000"), plan)
        assert answer.status_code == 201, answer.text
        published = time.monotonic()
        lie(admin.url, token, 3, [{"version": 3, "ok": 10**9, "failed": 0}])
        wait_until(lambda: rollout_state(3) == "halted", timeout=60, message="the halt")
        halted_after = time.monotonic() - published
        wait_for_version(workers, 4, timeout=20)

    # The healthy rollout: the gate said why it did not halt, while it was rolling.
    assert re.fullmatch(
        r"1 of \d+ agents with at least 20 hits of v2 fail more than 0\.20 of them \(the worst "
        r"1\.00 over 1000000000 hits\), but not halted: .+",
        healthy.reason,
    ), healthy.reason
    honest = AgentHits.objects.filter(version=2).exclude(agent_id=liar)
    assert len(honest) == 9 and all(row.failed == 0 for row in honest)

    # The failing one: halted by a majority of the agents judged, without the liar.
    assert 3 in traffic.served[workers[0]] and 3 in traffic.served[workers[1]]
    failing = Rollout.objects.get(version=3)
    halt = AuditEntry.objects.get(action=AuditEntry.ROLLOUT_HALTED)
    voted, judged = len(halt.detail["agents_failing"]), halt.detail["agents_judged"]
    assert voted >= 2 and 2 * voted > judged, halt.detail
    assert liar not in halt.detail["agents_failing"]
    assert failing.reason.startswith(f"{voted} of {judged} agents with at least 20 hits of v3")
    newest = ConfigVersion.objects.get(version=4)
    assert (newest.config_url, newest.rolled_back_from) == (upstream.url("/json"), 2)
    record_attack(
        "gate-lying-canary",
        "a healthy rollout completed despite the lying canary's billion failures; a failing "
        "one (7 of 10 canaries) halted despite its billion successes",
        healthy=healthy.state,
        failing=f"halted, {voted} of {judged} judged agents failing",
        halted_after_s=round(halted_after, 1),
    )
