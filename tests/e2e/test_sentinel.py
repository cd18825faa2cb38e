"""Redis Sentinel: the cache and each controller's one subscription find the master through the
sentinels and follow a failover by themselves.

Real processes: a Redis master, a replica and three sentinels (Debian's redis-server), two
controllers, four agents with their workers, and an admin. The master is killed; the sentinels
promote the replica; changes keep reaching every worker (during the failover through the
database re-check, afterwards through the new master) with no 5xx to anyone.
"""

import re
import signal
import subprocess
import time

import pytest
import requests

from tests.e2e.conftest import Admin, AdminReads, wait_for_version
from tests.e2e.proxies import SentinelGroup
from tests.support.processes import base_env, manage, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CHANNEL = "dcs:0:config-changes"
SERVER_ERROR = re.compile(r'^controller_requests_total\{[^}]*status="5\d\d"[^}]*\} (\S+)', re.M)


@pytest.fixture
def sentinels(tmp_path, stack):
    group = SentinelGroup(tmp_path)
    stack.processes.extend(group.processes())
    return group


def subscribers(group: SentinelGroup, port: int) -> int:
    return dict(group.client(port).pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0)


def server_errors(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(float(value) for value in SERVER_ERROR.findall(text))


def test_the_settings_refuse_a_sentinel_setup_they_cannot_use(tmp_path):
    cases = {
        "needs REDIS_SENTINEL_MASTER": {"REDIS_SENTINELS": "127.0.0.1:26379"},
        "is not HOST:PORT": {"REDIS_SENTINELS": "127.0.0.1", "REDIS_SENTINEL_MASTER": "m"},
        "the host of REDIS_URL is the master's name": {
            "REDIS_SENTINELS": "127.0.0.1:26379",
            "REDIS_SENTINEL_MASTER": "m",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
        },
    }
    for message, env in cases.items():
        result = _show_settings(tmp_path, **env)
        assert result.returncode != 0 and message in result.stderr, (message, result.stderr)
    result = _show_settings(
        tmp_path, REDIS_SENTINELS="10.0.0.1:26379,10.0.0.2:26379", REDIS_SENTINEL_MASTER="mymaster"
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^REDIS_URL\s+default\s+redis://mymaster/0$", result.stdout, re.M)


def _show_settings(tmp_path, **env):
    return subprocess.run(
        manage("show_settings"),
        env=base_env(VAR_DIR=str(tmp_path), **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_failover_is_followed_with_no_change_lost_and_no_5xx(
    stack, sentinels, upstream, admin_user
):
    env = {"REDIS_SENTINELS": sentinels.addresses, "REDIS_SENTINEL_MASTER": sentinels.MASTER}
    controllers = [stack.controller(None, **env)[1] for _ in range(2)]
    admin = Admin(controllers[0])
    assert admin.create(upstream.url("/text?v1")).status_code == 201
    workers = [stack.worker()[1] for _ in range(4)]
    for n, worker in enumerate(workers):
        stack.agent(controllers[n % 2], [worker], f"agent-{n}", AGENT_BACKOFF_CAP="2")
    wait_for_version(workers, 1)
    # One subscription per controller process, on the master the sentinels named.
    wait_until(lambda: subscribers(sentinels, sentinels.master_port) == 2, timeout=10)

    with AdminReads([Admin(url) for url in controllers]) as reads:
        time.sleep(0.5)
        killed = time.monotonic()
        sentinels.master.stop(signal.SIGKILL)
        # During the failover: the change is stored, and every watcher learns of it by the
        # database re-check while no Redis can be reached.
        changed = admin.change(config_url=upstream.url("/text?v2"))
        assert changed.status_code == 200 and changed.json()["version"] == 2
        wait_for_version(workers, 2, timeout=15)
        during = time.monotonic() - killed

        wait_until(
            lambda: sentinels.master_port_now() == sentinels.replica_port,
            timeout=30,
            interval=0.1,
            message="the sentinels promote the replica",
        )
        promoted = time.monotonic() - killed
        wait_until(
            lambda: subscribers(sentinels, sentinels.replica_port) == 2,
            timeout=20,
            interval=0.1,
            message="both controllers subscribed on the new master",
        )
        resubscribed = time.monotonic() - killed
        changed = admin.change(config_url=upstream.url("/text?v3"))
        assert changed.status_code == 200 and changed.json()["version"] == 3
        delivered = wait_for_version(workers, 3, timeout=10)
        failover_to_delivery = time.monotonic() - killed
        time.sleep(0.5)

    new_master = sentinels.client(sentinels.replica_port)
    # The cache writes to the new master too (the current state, refreshed by the change).
    assert new_master.keys("dcs:*"), "nothing cached on the new master"
    assert reads.calls > 20 and not reads.failed, reads.failed
    assert [server_errors(url) for url in controllers] == [0, 0]
    assert resubscribed <= 20 and delivered <= 5
    print(
        f"sentinel failover: change during it on every worker after {during:.2f} s; replica "
        f"promoted {promoted:.2f} s after the kill; both subscriptions on it {resubscribed:.2f} "
        f"s; next change on every worker in {delivered:.2f} s ({failover_to_delivery:.2f} s "
        f"after the kill); admin reads {reads.calls}, failed 0"
    )
