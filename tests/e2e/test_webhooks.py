"""Webhooks through real controller processes: a receiver on 127.0.0.1 (a small HTTP server in
the test) gets each event within a second of the change, signed so that the standardwebhooks
package verifies it; an event committed just before the controller is killed with SIGKILL is
delivered after the restart; two controller processes deliver each event once; and a rollout the
health gate halts is told as `rollout.halted` with the gate's numbers."""

import collections
import signal
import time

import pytest
import requests

from apps.agents.services import issue_registration_token
from apps.webhooks.delivery import LEASE
from apps.webhooks.models import Delivery
from tests.e2e.conftest import Admin
from tests.support.processes import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

# The receiver listens on 127.0.0.1, which a controller refuses by default.
LOCAL = {"WEBHOOKS_BLOCK_PRIVATE_URLS": "0"}


def add_webhook(admin: Admin, url: str, events=("*",)) -> str:
    """POST /webhooks; the secret it answers."""
    answer = admin.session.post(
        f"{admin.url}/webhooks", json={"url": url, "events": list(events)}, timeout=15
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["secret"]


def publish(admin: Admin, n: int, **extra) -> requests.Response:
    answer = admin.session.post(
        f"{admin.url}/config/admin",
        json={"config_url": f"https://upstream.example/{n}", "pooling_interval": 30, **extra},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    return answer


def test_a_change_reaches_the_receiver_within_a_second_signed(stack, receiver, admin_user):
    _, redis_url, _ = stack.redis()
    _, url = stack.controller(redis_url, **LOCAL)
    admin = Admin(url)
    secret = add_webhook(admin, receiver.url(), events=["config.published"])
    for n in range(1, 4):
        publish(admin, n)
        committed = time.monotonic()
        received = receiver.wait_for(n, timeout=5)[-1]
        assert received.at - committed < 1.0, f"after {received.at - committed:.3f} s"
        event = received.verify(secret)
        assert event["type"] == "config.published"
        assert event["data"]["version"] == n
        assert event["data"]["content"]["config_url"] == f"https://upstream.example/{n}"
        assert event["data"]["actor"] == admin_user.email


def test_an_event_committed_before_a_sigkill_is_delivered_after_the_restart(
    stack, receiver, admin_user
):
    _, redis_url, _ = stack.redis()
    # Its jobs off, this controller commits the outbox row and never sends it: it stands for a
    # process killed between the commit and the send.
    first, url = stack.controller(redis_url, CONTROLLER_RUN_JOBS="0", **LOCAL)
    admin = Admin(url)
    secret = add_webhook(admin, receiver.url())
    publish(admin, 1)
    first.stop(signal.SIGKILL)
    assert not first.alive()
    assert Delivery.objects.filter(state=Delivery.PENDING).count() == 1
    assert receiver.received() == []

    _, url = stack.controller(redis_url, **LOCAL)
    (received,) = receiver.wait_for(1, timeout=10)
    assert received.verify(secret)["type"] == "config.published"
    wait_until(
        lambda: Delivery.objects.filter(state=Delivery.DELIVERED).count() == 1,
        message="the delivery recorded as delivered",
    )


def test_a_send_cut_by_a_sigkill_is_sent_again_after_its_lease_with_the_same_id(
    stack, receiver, admin_user
):
    _, redis_url, _ = stack.redis()
    receiver.answer("/hook", 200, delay=3)  # the first try is still waiting when killed
    first, url = stack.controller(redis_url, **LOCAL)
    admin = Admin(url)
    add_webhook(admin, receiver.url())
    publish(admin, 1)
    wait_until(lambda: receiver.begun.get("/hook"), message="the first try in flight")
    first.stop(signal.SIGKILL)
    stack.controller(redis_url, **LOCAL)
    # At least once: the cut try reached the receiver too, and the restarted controller sends
    # again once the dead process's lease on the endpoint has run out.
    tries = receiver.wait_for(2, timeout=LEASE.total_seconds() + 15)
    assert len({received.webhook_id for received in tries}) == 1
    wait_until(
        lambda: Delivery.objects.filter(state=Delivery.DELIVERED).count() == 1,
        message="the delivery recorded as delivered",
    )


def test_two_controller_processes_deliver_each_event_once(stack, receiver, admin_user):
    _, redis_url, _ = stack.redis()
    _, first = stack.controller(redis_url, **LOCAL)
    _, second = stack.controller(redis_url, **LOCAL)
    admins = [Admin(first), Admin(second)]
    add_webhook(admins[0], receiver.url())
    add_webhook(admins[1], receiver.url("/second"))
    for n in range(1, 21):
        publish(admins[n % 2], n)
    for path in ("/hook", "/second"):
        receiver.wait_for(20, path, timeout=15)
    time.sleep(2)  # room for a duplicate to show up
    for path in ("/hook", "/second"):
        counts = collections.Counter(received.webhook_id for received in receiver.received(path))
        assert len(counts) == 20 and set(counts.values()) == {1}, path
        versions = [received.event["data"]["version"] for received in receiver.received(path)]
        assert versions == list(range(1, 21)), "one endpoint's events in order"


def test_a_halted_rollout_is_told_with_the_gates_numbers(stack, receiver, admin_user):
    _, redis_url, _ = stack.redis()
    _, url = stack.controller(redis_url, **LOCAL)
    admin = Admin(url)
    secret = add_webhook(admin, receiver.url(), events=["rollout.halted", "config.rolled_back"])
    publish(admin, 1)
    # The fleet's one agent, a canary, registered and reporting as a real one does.
    token = issue_registration_token(labels={"ring": "canary"})[0]
    registered = requests.post(
        f"{url}/agent/register",
        json={"name": "canary"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=15,
    )
    assert registered.status_code == 201, registered.text
    agent = {"Authorization": f"Bearer {registered.json()['agent_token']}"}
    plan = {"canary_labels": {"ring": "canary"}, "waves": [100], "min_hits": 20}
    publish(admin, 2, rollout=plan)
    # Its worker's hits of version 2 fail: 27 of 30.
    beat = requests.post(
        f"{url}/agent/heartbeat",
        json={
            "applied_version": 2,
            "workers": [],
            "hits": [{"version": 2, "ok": 3, "failed": 27}],
        },
        headers=agent,
        timeout=15,
    )
    assert beat.status_code == 204, beat.text
    received = {r.event["type"]: r for r in receiver.wait_for(2, timeout=15)}
    halted = received["rollout.halted"].verify(secret)["data"]
    assert halted["application"] == "default" and halted["environment"] == "production"
    assert halted["version"] == 2
    assert halted["hits"] == {"ok": 3, "failed": 27, "failure_rate": 0.9}
    assert halted["max_failure_rate"] == 0.2 and halted["min_hits"] == 20
    assert halted["agents_judged"] == 1 and "fail more than" in halted["reason"]
    rolled_back = received["config.rolled_back"].verify(secret)["data"]
    assert rolled_back["version"] == 3 and rolled_back["rolled_back_to"] == 1
