"""A staged rollout as users run it: two controller processes, six agents with six workers, two of
them canaries; and a controller stopped mid-rollout (SIGTERM, then SIGKILL) and started again,
after which the rollout carries on by itself. Each worker's version is watched from outside, and
the rollout's audit entries say when each wave started."""

import signal
import subprocess
import time

import pytest
import requests

from apps.agents.models import Agent
from apps.audit.models import AuditEntry
from apps.configs.models import ConfigVersion
from apps.rollouts.models import Rollout
from tests.e2e.conftest import Admin, start_canary_fleet, wait_for_version, worker_version
from tests.support.polling import Poller
from tests.support.processes import base_env, manage, wait_until
from tests.support.processes import test_database_url as database_url

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

BAKE = 5
PLAN = {"canary_labels": {"ring": "canary"}, "waves": [50, 100], "bake_seconds": BAKE}


class VersionWatch(Poller):
    """Polls every worker's /health and notes when each first held each version."""

    def __init__(self, worker_urls: list[str]) -> None:
        super().__init__()
        self.worker_urls = worker_urls
        self.first_seen: dict[tuple[str, int], float] = {}
        self.session = requests.Session()

    def poll(self) -> None:
        for url in self.worker_urls:
            try:
                version = self.session.get(f"{url}/health", timeout=5).json()["config_version"]
            except requests.RequestException:
                continue
            self.first_seen.setdefault((url, version), time.time())

    def when(self, url: str, version: int) -> float | None:
        return self.first_seen.get((url, version))


def waves_started(version: int) -> list[AuditEntry]:
    return list(
        AuditEntry.objects.filter(
            action=AuditEntry.ROLLOUT_WAVE_STARTED, detail__version=version
        ).order_by("at")
    )


def rollout_status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        manage("rollout_status", *args),
        env=base_env(DATABASE_URL=database_url()),
        capture_output=True,
        text=True,
        timeout=120,
    )


def targets(admin: Admin) -> dict[str, int]:
    answer = admin.session.get(f"{admin.url}/agents?page_size=100", timeout=10)
    return {item["name"]: item["target_version"] for item in answer.json()["results"]}


def test_staged_rollout_with_two_controller_processes(stack, upstream, admin_user):
    _, redis_url, _ = stack.redis()
    _, url = stack.controller(redis_url, workers=2)
    admin = Admin(url)
    assert admin.create(upstream.url("/text?v1")).status_code == 201
    workers = [stack.worker()[1] for _ in range(6)]
    agents = {}
    for index, worker in enumerate(workers):
        labels = {"AGENT_LABELS": "ring=canary"} if index < 2 else {"AGENT_LABELS": "ring=main"}
        agents[index] = stack.agent(url, [worker], f"agent-{index}", **labels)
    canary_workers, other_workers = workers[:2], workers[2:]
    wait_for_version(workers, 1, timeout=60)
    wait_until(
        lambda: Agent.objects.filter(labels={"ring": "canary"}).count() == 2,
        timeout=20,
        message="the canaries registered with their labels",
    )

    # -- A rollout to the end ------------------------------------------------------------------
    with VersionWatch(workers) as seen:
        published = time.time()
        answer = admin.session.post(
            f"{url}/config/admin",
            json={"config_url": upstream.url("/text?v2"), "pooling_interval": 30, "rollout": PLAN},
            timeout=15,
        )
        assert answer.status_code == 201, answer.text
        wait_for_version(canary_workers, 2, timeout=20)
        # It should keep every other worker on v1 until the canaries applied v2 and BAKE passed.
        assert all(worker_version(w) == 1 for w in other_workers)
        wait_for_version(workers, 2, timeout=60)
        wait_until(
            lambda: Rollout.objects.get(version=2).state == "completed",
            timeout=30,
            message="the rollout completed",
        )

    waves = waves_started(2)
    # Two controller processes advance rollouts; each wave still started exactly once.
    assert [entry.detail["wave"] for entry in waves] == [0, 1, 2]
    assert AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_COMPLETED).count() == 1
    wave_at = [entry.at.timestamp() for entry in waves]
    canaries_applied = max(seen.when(w, 2) for w in canary_workers)
    assert wave_at[1] >= max(published + BAKE - 0.5, canaries_applied - 0.5)
    assert wave_at[2] >= wave_at[1] + BAKE - 0.5
    # Wave 1: half the others, exactly 2 of 4; wave 2: the rest. None before its wave started.
    first = [w for w in other_workers if seen.when(w, 2) < wave_at[2]]
    assert len(first) == 2
    for worker in other_workers:
        wave = 1 if worker in first else 2
        assert seen.when(worker, 2) >= wave_at[wave] - 0.2, (worker, wave)
    assert min(seen.when(w, 2) for w in other_workers) >= published + BAKE - 0.5
    status = rollout_status("--wait", "--timeout", "30")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "converged" in status.stdout

    # -- A rollout aborted mid-way -------------------------------------------------------------
    slow = {**PLAN, "bake_seconds": 600}
    answer = admin.session.put(
        f"{url}/config/admin",
        json={"config_url": upstream.url("/text?v3"), "rollout": slow},
        timeout=15,
    )
    assert answer.status_code == 200 and answer.json()["version"] == 3, answer.text
    wait_for_version(canary_workers, 3, timeout=20)
    assert all(worker_version(w) == 2 for w in other_workers)

    # A publish during the rollout is 409 naming it, and a stale If-Match is 412; nothing stored.
    busy = admin.change(pooling_interval=45)
    assert busy.status_code == 409 and "version 3" in busy.json()["detail"]
    stale = admin.session.put(
        f"{url}/config/admin",
        json={"pooling_interval": 45},
        headers={"If-Match": '"2"'},
        timeout=15,
    )
    assert stale.status_code == 412 and stale.json()["current_version"] == 3
    assert ConfigVersion.objects.count() == 3

    # An agent restarted mid-rollout keeps its place: canary on v3, the other on v2.
    before = targets(admin)
    for index in (0, 4):
        agents[index].stop()
        agents[index] = stack.agent(
            url,
            [workers[index]],
            f"agent-{index}",
            register=False,
            AGENT_LABELS="ring=canary" if index == 0 else "ring=main",
        )
    time.sleep(3)
    assert targets(admin) == before
    assert worker_version(workers[0]) == 3 and worker_version(workers[4]) == 2
    assert Agent.objects.count() == 6

    # From the moment the abort is asked for, its own answer included.
    aborting = time.monotonic()
    answer = admin.session.post(
        f"{url}/config/admin/rollout/abort", json={"reason": "canary errors"}, timeout=15
    )
    assert answer.status_code == 200 and answer.json()["state"] == "aborted", answer.text
    # The previous content is a committed version of its own, 4.
    wait_for_version(workers, 4, timeout=10)
    back = time.monotonic() - aborting
    print(f"every worker on the previous content {back:.2f} s after the abort was asked for")
    # At once, not after the 600 s bake: each held watch is answered on the commit's
    # notification and each agent pushes straight away, one request per worker.
    assert back < 1.0
    newest = ConfigVersion.objects.get(version=4)
    assert (newest.config_url, newest.rolled_back_from) == (upstream.url("/text?v2"), 2)
    entry = AuditEntry.objects.get(action=AuditEntry.ROLLOUT_ABORTED)
    assert entry.detail["reason"] == "canary errors"
    status = rollout_status()
    assert status.returncode == 1
    assert "aborted" in status.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_rollout_carries_on_after_the_controller_restarts(stack, upstream, admin_user, sig):
    """The rollout's state is in the database and every controller process advances it on its
    own clock, so a controller stopped during the canary wave and started again on the same
    database moves it wave by wave to the end, with no promote, each wave started once."""
    bake = 2
    _, redis_url, _ = stack.redis()
    controller, url = stack.controller(redis_url)
    admin = Admin(url)
    assert admin.create(upstream.url("/text?v1")).status_code == 201
    # Back on the restarted controller within a second, not after a long backoff.
    workers = start_canary_fleet(stack, url, AGENT_BACKOFF_CAP="1")
    canary, other_workers = workers[0], workers[1:]

    with VersionWatch(workers) as seen:
        published = time.time()
        answer = admin.session.post(
            f"{url}/config/admin",
            json={
                "config_url": upstream.url("/text?v2"),
                "pooling_interval": 30,
                "rollout": {
                    "canary_labels": {"ring": "canary"},
                    "waves": [50, 100],
                    "bake_seconds": bake,
                },
            },
            timeout=15,
        )
        assert answer.status_code == 201, answer.text
        wait_for_version([canary], 2, timeout=20)
        rollout = admin.session.get(f"{url}/config/admin/rollout", timeout=10).json()
        assert (rollout["state"], rollout["wave"]) == ("rolling", 0), rollout
        controller.stop(sig)
        assert not controller.alive()

        # With no controller running the bake time passes and nothing moves: the canary wave
        # is still the current one, and the other workers keep version 1.
        time.sleep(max(0.0, published + bake + 0.5 - time.time()))
        assert Rollout.objects.get(version=2).wave == 0
        assert all(worker_version(w) == 1 for w in other_workers)

        restarted = time.time()
        stack.controller(redis_url, port=int(url.rsplit(":", 1)[1]))
        observed = []

        def completed() -> bool:
            body = admin.session.get(f"{url}/config/admin/rollout", timeout=5).json()
            observed.append((body["state"], body["wave"]))
            return body["state"] == "completed"

        # Nobody calls promote: the new process advances the rollout by itself, in about two
        # bakes, and well within the 30 s watch an agent already up to date would hold before
        # reporting to the restarted controller.
        wait_until(completed, timeout=20, interval=0.1, message="the rollout completed")
        wait_for_version(workers, 2, timeout=20)

    # What the API said went only forward, ending on the last wave.
    assert observed == sorted(observed, key=lambda o: (o[0] == "completed", o[1]))
    assert observed[-1] == ("completed", 2)
    waves = waves_started(2)
    # Each wave started exactly once; the two after the canaries by the restarted controller.
    assert [(entry.detail["wave"], entry.detail["how"]) for entry in waves] == [
        (0, "started"),
        (1, "advanced"),
        (2, "advanced"),
    ]
    assert AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_COMPLETED).count() == 1
    wave_at = [entry.at.timestamp() for entry in waves]
    assert wave_at[1] >= restarted and wave_at[2] >= wave_at[1] + bake - 0.5
    # Wave 1 is 50% of the three others, 2 of them; wave 2 the last. Each worker held version 1
    # until its own wave started, the restart included.
    first = [w for w in other_workers if seen.when(w, 2) < wave_at[2]]
    assert len(first) == 2
    for worker in other_workers:
        wave = 1 if worker in first else 2
        assert seen.when(worker, 2) >= wave_at[wave] - 0.2, (worker, wave)
        assert seen.when(worker, 1) is not None
