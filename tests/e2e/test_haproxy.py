"""Two controllers behind HAProxy (Debian's, with deploy/haproxy.cfg as shipped): agents,
workers and admins reach the controllers only through it, and one controller is stopped and
started again under them."""

import time

import pytest
import requests

from tests.e2e.conftest import Admin, AdminReads, wait_for_version
from tests.e2e.proxies import Haproxy
from tests.support.processes import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WATCH_HOLD_SECONDS = 60 + 60 / 16


def test_the_shipped_configuration_waits_longer_than_a_watch_is_held():
    text = Haproxy.CONFIG.read_text()
    timeouts = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "timeout":
            timeouts[words[1]] = float(words[2].removesuffix("s"))
    assert timeouts["server"] > WATCH_HOLD_SECONDS
    assert timeouts["client"] > WATCH_HOLD_SECONDS
    assert "uri /readyz" in text and "option redispatch" in text


def test_one_controller_stopped_and_started_behind_haproxy(stack, upstream, admin_user):
    _, redis_url, _ = stack.redis()
    first, first_url = stack.controller(redis_url)
    _, second_url = stack.controller(redis_url)
    first_port = int(first_url.rsplit(":", 1)[1])
    proxy = Haproxy([first_url.removeprefix("http://"), second_url.removeprefix("http://")])
    try:
        wait_until(
            lambda: all(s["status"] == "UP" for s in proxy.servers().values()),
            timeout=15,
            message="both controllers UP in haproxy",
        )
        admin = Admin(proxy.url)
        assert admin.create(upstream.url("/text?v1")).status_code == 201
        workers = [stack.worker()[1] for _ in range(4)]
        for n, worker in enumerate(workers):
            stack.agent(proxy.url, [worker], f"agent-{n}", AGENT_BACKOFF_CAP="2")
        wait_for_version(workers, 1)

        def held(server: str) -> int:
            return int(proxy.servers()[server]["scur"])

        # leastconn spreads the held watches over both controllers.
        wait_until(
            lambda: held("controller-1") >= 1 and held("controller-2") >= 1,
            timeout=20,
            message="watches held on both controllers",
        )

        with AdminReads([Admin(proxy.url)], retries=1) as traffic:
            time.sleep(1)
            stopped = time.monotonic()
            first.stop()
            # Every agent holds its watch on the other controller again.
            wait_until(
                lambda: held("controller-1") == 0 and held("controller-2") >= len(workers),
                timeout=15,
                interval=0.1,
                message="every watch moved to controller-2",
            )
            moved = time.monotonic() - stopped
            changed = admin.change(config_url=upstream.url("/text?v2"))
            assert changed.status_code == 200 and changed.json()["version"] == 2
            delivered = wait_for_version(workers, 2, timeout=15)

            restarted = time.monotonic()
            stack.controller(redis_url, port=first_port)
            wait_until(
                lambda: proxy.servers()["controller-1"]["status"] == "UP",
                timeout=20,
                message="controller-1 UP again",
            )
            back_up = time.monotonic() - restarted
            before = int(proxy.servers()["controller-1"]["stot"])
            # New connections go to the least busy controller: the restarted one.
            for _ in range(4):
                fresh = requests.get(f"{proxy.url}/healthz", timeout=5)
                assert fresh.status_code == 200
            taken = int(proxy.servers()["controller-1"]["stot"]) - before
            changed = admin.change(config_url=upstream.url("/text?v3"))
            assert changed.status_code == 200 and changed.json()["version"] == 3
            wait_for_version(workers, 3, timeout=15)
            time.sleep(0.5)
    finally:
        proxy.process.stop()
        print(f"----- haproxy -----\n{proxy.process.output()[-4000:]}")

    assert moved <= 10, moved
    assert taken >= 1, "the restarted controller takes no traffic"
    assert traffic.calls > 20 and not traffic.failed, traffic.failed
    print(
        f"haproxy: watches moved in {moved:.2f} s, v2 on every worker {delivered:.2f} s after "
        f"the change, controller-1 UP {back_up:.2f} s after its restart; admin calls "
        f"{traffic.calls}, retried {traffic.retried}, failed after one retry 0"
    )
