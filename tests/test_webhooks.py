"""Webhooks: the endpoints' API, the outbox written in the transaction of each change, and the
delivery job against a real receiver on 127.0.0.1, one step at a time with the clock under the
test's control. The end-to-end runs with controller processes are in tests/e2e/test_webhooks.py.
"""

import base64
import json
import threading
import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from apps.accounts.roles import APPROVER, EDITOR, OPERATOR, VIEWER
from apps.audit.models import AuditEntry
from apps.configs.actions import abort_rollout, halt_rollout, publish_config, rollback_config
from apps.ops.jobs import JOBS, Job, JobRunner
from apps.ops.wake import run_soon
from apps.rollouts.models import Rollout
from apps.rollouts.services import pause_rollout, promote_rollout, resume_rollout
from apps.scopes.services import default_scope, default_scope_id, get_scope
from apps.webhooks import delivery as job
from apps.webhooks.events import SUBSCRIBABLE, emit
from apps.webhooks.models import Delivery, WebhookEndpoint
from apps.webhooks.services import create_endpoint, send_again
from tests.support.clients import client_for
from tests.support.metrics import sample
from tests.support.processes import dead_port
from tests.support.scopes import make_two_by_two, set_approvals

URL = "http://upstream.example/task"


@pytest.fixture(autouse=True)
def _local_receivers(settings):
    # The receivers listen on 127.0.0.1, which is refused by default.
    settings.WEBHOOKS_BLOCK_PRIVATE_URLS = False


@pytest.fixture
def operator(db):
    return client_for("operator@example.com", OPERATOR)


def endpoint_for(url: str, events=("*",), **fields) -> tuple[WebhookEndpoint, str]:
    return create_endpoint(url=url, events=list(events), **fields)


def deliver(now=None) -> int:
    """One step of the delivery job, its passes run here."""
    return job.deliver_due(now, inline=True)


def outbox(endpoint=None) -> list[str]:
    rows = Delivery.objects.order_by("id")
    if endpoint is not None:
        rows = rows.filter(endpoint=endpoint)
    return list(rows.values_list("event_type", flat=True))


# The API ----------------------------------------------------------------------------------------


def test_an_operator_adds_a_webhook_and_sees_its_secret_once(operator, receiver):
    answer = operator.post(
        "/webhooks",
        {"url": receiver.url(), "events": ["config.published"], "description": "chat"},
        format="json",
    )
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"].removeprefix("whsec_"))) == 32
    assert body["id"] and body["url"] == receiver.url() and body["enabled"] is True
    assert body["applications"] == [] and body["environments"] == []
    stored = WebhookEndpoint.objects.get(pk=body["id"])
    assert stored.secret == body["secret"]  # usable: it signs the deliveries
    # It should never be shown again.
    listed = operator.get("/webhooks").json()["results"]
    assert [row["id"] for row in listed] == [body["id"]]
    assert "secret" not in listed[0]
    assert "secret" not in operator.get(f"/webhooks/{body['id']}").json()
    entry = AuditEntry.objects.get(action=AuditEntry.WEBHOOK_CREATED)
    assert entry.actor == "operator@example.com" and "secret" not in entry.detail


def test_the_audit_log_never_shows_a_webhooks_path_or_credentials(operator):
    # A chat service's incoming-webhook URL is a credential; the audit log is every role's.
    url = "https://user:pw@hooks.example/services/T0/B0/XYZsecret?token=abc"
    created = operator.post("/webhooks", {"url": url, "events": ["*"]}, format="json")
    webhook = created.json()["id"]
    operator.patch(f"/webhooks/{webhook}", {"url": url.replace("XYZ", "QRS")}, format="json")
    operator.delete(f"/webhooks/{webhook}")
    entries = AuditEntry.objects.filter(action__startswith="webhook.")
    assert entries.count() == 3
    for entry in entries:
        written = json.dumps(entry.detail) + entry.target
        assert "secret" not in written and "pw" not in written and "abc" not in written
        assert "https://hooks.example/…" in written
    changed = entries.get(action=AuditEntry.WEBHOOK_CHANGED).detail
    assert changed["before"]["url"] != changed["after"]["url"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://localhost/hook",
    ],
)
def test_a_url_leading_to_a_private_address_is_400_and_nothing_is_stored(operator, settings, url):
    settings.WEBHOOKS_BLOCK_PRIVATE_URLS = True
    answer = operator.post("/webhooks", {"url": url, "events": ["*"]}, format="json")
    assert answer.status_code == 400, answer.content
    assert "private address" in answer.json()["url"][0]
    assert "WEBHOOKS_BLOCK_PRIVATE_URLS" in answer.json()["url"][0]
    assert WebhookEndpoint.objects.count() == 0
    assert not AuditEntry.objects.filter(action=AuditEntry.WEBHOOK_CREATED).exists()


def test_a_private_url_is_allowed_when_the_setting_is_off(operator):
    answer = operator.post(
        "/webhooks", {"url": "http://127.0.0.1:9000/hook", "events": ["*"]}, format="json"
    )
    assert answer.status_code == 201, answer.content


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["config.publishd"]}, "events"),
        ({"events": []}, "events"),
        ({"events": ["webhook.test"]}, "events"),
        ({"events": ["*"], "applications": ["nope"]}, "applications"),
        ({"events": ["*"], "environments": ["Bad Name"]}, "environments"),
        ({"events": ["*"], "url": "ftp://example.com/x"}, "url"),
    ],
)
def test_unknown_events_and_names_are_400_and_nothing_is_stored(operator, body, field):
    answer = operator.post("/webhooks", {"url": "https://hooks.example/x", **body}, format="json")
    assert answer.status_code == 400, answer.content
    assert field in answer.json()
    assert WebhookEndpoint.objects.count() == 0


@pytest.mark.parametrize("role", [VIEWER, EDITOR, APPROVER, None])
def test_only_operators_and_superusers_may_use_webhooks(db, role):
    endpoint, _ = endpoint_for("https://hooks.example/x")
    client = client_for(f"{role}@example.com", *([role] if role else []))
    for method, path, body in [
        ("get", "/webhooks", None),
        ("post", "/webhooks", {"url": "https://hooks.example/y", "events": ["*"]}),
        ("get", f"/webhooks/{endpoint.pk}", None),
        ("patch", f"/webhooks/{endpoint.pk}", {"enabled": False}),
        ("delete", f"/webhooks/{endpoint.pk}", None),
        ("post", f"/webhooks/{endpoint.pk}/rotate-secret", None),
        ("post", f"/webhooks/{endpoint.pk}/test", None),
    ]:
        answer = getattr(client, method)(path, body, format="json")
        assert answer.status_code == 403, (method, path)
        assert answer.json()["required_role"] == OPERATOR
    assert WebhookEndpoint.objects.count() == 1 and Delivery.objects.count() == 0
    superuser = client_for("root@example.com", superuser=True)
    assert superuser.get("/webhooks").status_code == 200


def test_an_operator_changes_and_deletes_a_webhook(operator):
    make_two_by_two()
    endpoint, secret = endpoint_for("https://hooks.example/x")
    answer = operator.patch(
        f"/webhooks/{endpoint.pk}",
        {"events": ["rollout.halted", "config.published"], "applications": ["payments"]},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    assert answer.json()["events"] == ["config.published", "rollout.halted"]
    assert answer.json()["applications"] == ["payments"]
    assert "secret" not in answer.json()
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).secret == secret
    assert AuditEntry.objects.filter(action=AuditEntry.WEBHOOK_CHANGED).count() == 1
    assert operator.get("/webhooks/999").status_code == 404
    assert operator.delete(f"/webhooks/{endpoint.pk}").status_code == 204
    assert not WebhookEndpoint.objects.exists()
    assert AuditEntry.objects.filter(action=AuditEntry.WEBHOOK_DELETED).count() == 1


def test_enabling_a_disabled_webhook_clears_its_failure_streak(operator):
    endpoint, _ = endpoint_for("https://hooks.example/x")
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        enabled=False, disabled_reason="failing", failing_since=timezone.now()
    )
    answer = operator.patch(f"/webhooks/{endpoint.pk}", {"enabled": True}, format="json")
    assert answer.json()["enabled"] is True
    assert answer.json()["disabled_reason"] == "" and answer.json()["failing_since"] is None


def test_a_rotated_secret_is_answered_once_and_both_secrets_sign_for_a_day(
    operator, receiver, publish
):
    created = operator.post("/webhooks", {"url": receiver.url(), "events": ["*"]}, format="json")
    old = created.json()["secret"]
    rotated = operator.post(f"/webhooks/{created.json()['id']}/rotate-secret")
    assert rotated.status_code == 200, rotated.content
    new = rotated.json()["secret"]
    assert new.startswith("whsec_") and new != old
    assert "secret" not in operator.get(f"/webhooks/{created.json()['id']}").json()
    assert AuditEntry.objects.filter(action=AuditEntry.WEBHOOK_SECRET_ROTATED).exists()

    publish()
    deliver()
    (received,) = receiver.received()
    # It should carry two signatures, each verifying with its own secret.
    assert len(received.headers["webhook-signature"].split(" ")) == 2
    assert received.verify(new)["type"] == "config.published"
    assert received.verify(old)["type"] == "config.published"

    # A day later the old one signs no more.
    endpoint = WebhookEndpoint.objects.get()
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
    )
    publish(URL + "/2")
    deliver()
    later = receiver.received()[1]
    assert len(later.headers["webhook-signature"].split(" ")) == 1
    later.verify(new)
    with pytest.raises(Exception, match="No matching signature"):
        later.verify(old)


def test_a_test_event_goes_to_that_endpoint_only(operator, receiver):
    tested, secret = endpoint_for(receiver.url(), events=["rollout.halted"])
    endpoint_for(receiver.url("/other"))
    answer = operator.post(f"/webhooks/{tested.pk}/test")
    assert answer.status_code == 202, answer.content
    assert answer.json()["event_type"] == "webhook.test"
    deliver()
    (received,) = receiver.received()
    event = received.verify(secret)
    assert event["type"] == "webhook.test" and event["data"]["webhook"] == tested.pk
    assert receiver.received("/other") == []


# The outbox, in the change's transaction --------------------------------------------------------


def test_a_publish_writes_its_event_in_the_outbox_for_each_endpoint_that_wants_it(db):
    make_two_by_two()
    every, _ = endpoint_for("https://a.example/x")
    published, _ = endpoint_for("https://b.example/x", events=["config.published"])
    halted, _ = endpoint_for("https://c.example/x", events=["rollout.halted"])
    payments, _ = endpoint_for("https://d.example/x", applications=["payments"])
    staging, _ = endpoint_for("https://e.example/x", environments=["staging"])
    off, _ = endpoint_for("https://f.example/x", enabled=False)
    publish_config(config_url=URL, pooling_interval=30)
    assert outbox(every) == outbox(published) == ["config.published"]
    assert outbox(halted) == outbox(payments) == outbox(staging) == outbox(off) == []
    publish_config(
        scope_id=get_scope("payments", "staging").pk, config_url=URL, pooling_interval=30
    )
    assert outbox(payments) == outbox(staging) == ["config.published"]
    publish_config(scope_id=get_scope("search", "staging").pk, config_url=URL, pooling_interval=30)
    assert outbox(payments) == ["config.published"]
    assert outbox(staging) == ["config.published", "config.published"]
    assert outbox(every) == ["config.published"] * 3


def test_a_change_rolled_back_writes_nothing_in_the_outbox(db):
    # Made before the transaction below, whose rollback would take a scope made in it along.
    default_scope()
    endpoint_for("https://a.example/x")

    class Refused(Exception):
        pass

    with pytest.raises(Refused), transaction.atomic():
        publish_config(config_url=URL, pooling_interval=30)
        assert outbox() == ["config.published"]
        raise Refused()
    assert outbox() == []
    publish_config(config_url=URL, pooling_interval=30)
    # A publish refused (stale If-Match) rolls back its transaction: no event either.
    with pytest.raises(Exception, match="version"):
        publish_config(config_url=URL + "/x", pooling_interval=30, if_match='"7"')
    assert outbox() == ["config.published"]


def test_the_event_of_a_publish_carries_the_previous_and_new_content_and_the_actor(db, admin_user):
    endpoint, _ = endpoint_for("https://a.example/x")
    publish_config(config_url=URL, pooling_interval=30, actor=admin_user)
    publish_config(config_url=URL + "/2", pooling_interval=45, actor=admin_user)
    event = Delivery.objects.order_by("id").last()
    body = json.loads(event.body)
    assert set(body) == {"type", "id", "timestamp", "data"}
    assert body["id"] == event.event_id
    data = body["data"]
    assert data["application"] == "default" and data["environment"] == "production"
    assert data["version"] == 2 and data["actor"] == admin_user.email
    assert data["previous"] == {"version": 1, "config_url": URL, "pooling_interval": 30}
    assert data["content"] == {"version": 2, "config_url": URL + "/2", "pooling_interval": 45}


def test_every_event_is_written_where_its_change_happens(db, admin_user):
    from apps.agents.services import issue_registration_token, register_agent, revoke_agent
    from apps.changes.services import approve_change, propose_change, reject_change

    endpoint_for("https://a.example/x")
    scope = default_scope_id()
    publish_config(config_url=URL, pooling_interval=30)
    token, _ = issue_registration_token()
    agent, _ = register_agent(token=token, name="a-1")
    plan = {"waves": [50, 100]}
    publish_config(config_url=URL + "/2", pooling_interval=30, rollout=plan, actor=admin_user)
    pause_rollout(scope, actor=admin_user)
    resume_rollout(scope, actor=admin_user)
    promote_rollout(scope, actor=admin_user)
    promote_rollout(scope, actor=admin_user)  # the last wave: completed
    publish_config(config_url=URL + "/3", pooling_interval=30, rollout=plan)
    abort_rollout(actor=admin_user, reason="wrong URL")
    publish_config(config_url=URL + "/4", pooling_interval=30, rollout=plan)
    rollout = Rollout.objects.order_by("-version").first()
    numbers = {
        "reason": "failure rate 0.90 over 30 hits",
        "hits": {"ok": 3, "failed": 27, "failure_rate": 0.9},
        "previous_hits": {"ok": 30, "failed": 0, "failure_rate": 0.0},
        "max_failure_rate": 0.2,
        "min_hits": 20,
    }
    halt_rollout(rollout, numbers)
    rollback_config(version=1, actor=admin_user)
    set_approvals(1)
    approver = client_for("approver@example.com", APPROVER).user
    first = propose_change(author=admin_user, pooling_interval=60)
    approve_change(first.pk, approver=approver)
    second = propose_change(author=admin_user, pooling_interval=90)
    reject_change(second.pk, approver=approver, comment="no")
    revoke_agent(agent, actor=admin_user)

    written = set(outbox())
    # A scheduled change's outcomes are written by the scheduled changes' job (test_scheduled.py).
    assert written == {event for event in SUBSCRIBABLE if not event.startswith("scheduled_change.")}
    halted = Delivery.objects.get(event_type="rollout.halted")
    data = json.loads(halted.body)["data"]
    assert data["version"] == rollout.version and data["hits"] == numbers["hits"]
    assert data["previous_hits"] == numbers["previous_hits"]
    assert data["max_failure_rate"] == 0.2 and data["min_hits"] == 20


# Delivery against a real receiver -----------------------------------------------------------------


def test_a_published_config_arrives_signed_and_verifies_with_standardwebhooks(receiver, publish):
    endpoint, secret = endpoint_for(receiver.url(), events=["config.published"])
    publish()
    assert deliver() == 1
    (received,) = receiver.received()
    event = received.verify(secret)
    assert event["type"] == "config.published"
    assert received.webhook_id == event["id"]
    assert received.headers["content-type"] == "application/json"
    row = Delivery.objects.get()
    assert row.state == Delivery.DELIVERED and row.attempts == 1 and row.response_code == 200
    # Nothing more is due: the next step claims nothing.
    assert deliver() == 0 and len(receiver.received()) == 1


def test_failed_tries_are_retried_on_the_schedule_with_the_same_webhook_id(receiver, publish):
    receiver.answer("/hook", 500, 500, 500)
    endpoint, secret = endpoint_for(receiver.url())
    publish()
    now = timezone.now()
    waits = []
    for attempt in range(1, 5):
        deliver(now)
        row = Delivery.objects.get()
        assert row.attempts == attempt
        if attempt < 4:
            assert row.state == Delivery.PENDING and row.response_code == 500
            waits.append((row.next_attempt_at - now).total_seconds())
            # Nothing is sent before the next try is due.
            deliver(row.next_attempt_at - timedelta(seconds=1))
            assert len(receiver.received()) == attempt
            now = row.next_attempt_at
    assert row.state == Delivery.DELIVERED and row.response_code == 200
    tries = receiver.received()
    assert len(tries) == 4
    assert {received.webhook_id for received in tries} == {row.event_id}
    for received in tries:
        received.verify(secret)
    for wait, base in zip(waits, (5, 30, 120), strict=True):
        assert base * 0.8 - 1 <= wait <= base * 1.2
    assert WebhookEndpoint.objects.get().failing_since is None


def test_the_retry_schedule_backs_off_then_retries_every_six_hours():
    for attempts, base in [(1, 5), (2, 30), (3, 120), (4, 600), (5, 3600), (6, 21600), (20, 21600)]:
        delays = [job.retry_delay(attempts) for _ in range(50)]
        assert all(base * 0.8 <= delay <= base * 1.2 for delay in delays)
        assert len(set(delays)) > 1  # jitter


def test_no_answer_is_retried_like_an_error(db, publish):
    with dead_port() as port:
        endpoint_for(f"http://127.0.0.1:{port}/hook")
        publish()
        deliver()
    row = Delivery.objects.get()
    assert row.state == Delivery.PENDING and row.attempts == 1
    assert row.response_code is None and "no answer" in row.last_error
    assert row.next_attempt_at > timezone.now()


def test_a_delivery_to_a_private_address_fails_when_the_setting_is_on(receiver, publish, settings):
    endpoint_for(receiver.url())
    settings.WEBHOOKS_BLOCK_PRIVATE_URLS = True
    publish()
    deliver()
    row = Delivery.objects.get()
    assert row.state == Delivery.PENDING and "private address" in row.last_error
    assert receiver.received() == []


def test_an_endpoint_failing_for_three_days_is_disabled_and_audited(receiver, publish):
    receiver.answer("/hook", *[500] * 10)
    endpoint, _ = endpoint_for(receiver.url())
    publish()
    publish(URL + "/2")
    started = timezone.now()
    deliver(started)
    failing_since = WebhookEndpoint.objects.get().failing_since
    assert timedelta(0) <= failing_since - started < timedelta(seconds=5)
    # Just under three days: still retried.
    deliver(started + timedelta(days=3) - timedelta(minutes=1))
    assert WebhookEndpoint.objects.get().enabled
    deliver(started + timedelta(days=3, minutes=1))
    endpoint.refresh_from_db()
    assert not endpoint.enabled and "500" in endpoint.disabled_reason
    assert set(Delivery.objects.values_list("state", flat=True)) == {Delivery.FAILED}
    entry = AuditEntry.objects.get(action=AuditEntry.WEBHOOK_DISABLED)
    # Both were given up: the one that failed last and the one waiting behind it.
    assert entry.actor == "system" and entry.detail["abandoned"] == 2
    # A disabled endpoint gets nothing more.
    publish(URL + "/3")
    assert deliver(started + timedelta(days=4)) == 0
    assert len(receiver.received()) == 3


def test_one_endpoints_deliveries_go_out_in_order_and_wait_behind_a_failed_one(receiver, publish):
    endpoint, _ = endpoint_for(receiver.url())
    receiver.answer("/hook", 503)
    for n in range(3):
        publish(f"{URL}/{n}")
    deliver()
    # The first failed: the later ones were not sent past it.
    assert [r.event["data"]["version"] for r in receiver.received()] == [1]
    # An event arriving meanwhile waits too.
    publish(f"{URL}/new")
    deliver()
    assert len(receiver.received()) == 1
    deliver(Delivery.objects.order_by("id").first().next_attempt_at)
    versions = [r.event["data"]["version"] for r in receiver.received()]
    assert versions == [1, 1, 2, 3, 4]


def test_an_endpoint_claimed_by_one_pass_is_skipped_by_another_until_its_lease_ends(
    receiver, publish
):
    endpoint_for(receiver.url())
    publish()
    now = timezone.now()
    assert len(job.claim_endpoints(now, 10)) == 1
    assert job.claim_endpoints(now, 10) == []
    assert job.claim_endpoints(now + job.LEASE + timedelta(seconds=1), 10) != []


def test_send_again_sends_a_delivered_event_again_with_its_webhook_id(receiver, publish):
    endpoint_for(receiver.url())
    publish()
    deliver()
    again = send_again(Delivery.objects.get())
    assert again.state == Delivery.PENDING
    deliver()
    first, second = receiver.received()
    assert first.webhook_id == second.webhook_id and first.body == second.body
    assert Delivery.objects.filter(state=Delivery.DELIVERED).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_slow_endpoint_does_not_delay_another(receiver, settings):
    receiver.answer("/slow", 200, delay=3)
    endpoint_for(receiver.url("/slow"))
    endpoint_for(receiver.url("/fast"))
    publish_config(config_url=URL, pooling_interval=30)
    started = time.monotonic()
    assert job.deliver_due() == 2  # each on a thread of the pool
    receiver.wait_for(1, "/fast", timeout=2)
    assert time.monotonic() - started < 1.5
    assert receiver.received("/slow") == []
    # A second event for the fast endpoint goes out while the slow one still waits.
    publish_config(config_url=URL + "/2", pooling_interval=30)
    job.deliver_due()
    receiver.wait_for(2, "/fast", timeout=2)
    assert receiver.received("/slow") == []
    receiver.wait_for(1, "/slow", timeout=10)
    _wait_until_idle()


def _wait_until_idle() -> None:
    deadline = time.monotonic() + 15
    while job.POOL.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.POOL.busy == 0


# The job runner, the metrics and the admin -----------------------------------------------------


def test_a_commit_wakes_the_job_at_once_instead_of_at_its_next_period():
    ran = []
    runner = JobRunner(jobs=(Job("slow job", lambda: 3600.0, lambda: ran.append(1)),))
    runner.start()
    try:
        deadline = time.monotonic() + 5
        while not ran and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran == [1]
        woken = time.monotonic()
        run_soon("slow job")
        while len(ran) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(ran) == 2 and time.monotonic() - woken < 0.5
        run_soon("no such job")  # changes nothing
    finally:
        runner.halt()


def test_metrics_count_deliveries_by_outcome_and_show_the_outbox_age(receiver, publish, client):
    def scrape() -> str:
        return client.get("/metrics").content.decode()

    before = sample(scrape(), "controller_webhook_deliveries_total", outcome="delivered") or 0
    assert sample(scrape(), "controller_webhook_outbox_age_seconds") == 0
    receiver.answer("/hook", 500)
    endpoint_for(receiver.url())
    publish()
    Delivery.objects.update(created_at=timezone.now() - timedelta(seconds=90))
    assert 90 <= sample(scrape(), "controller_webhook_outbox_age_seconds") < 100
    failed = sample(scrape(), "controller_webhook_deliveries_total", outcome="failed")
    deliver()
    deliver(Delivery.objects.get().next_attempt_at)
    text = scrape()
    assert sample(text, "controller_webhook_deliveries_total", outcome="delivered") == before + 1
    assert sample(text, "controller_webhook_deliveries_total", outcome="failed") == failed + 1
    assert sample(text, "controller_webhook_outbox_age_seconds") == 0


def test_the_admin_lists_endpoints_and_deliveries_and_sends_tests_and_again(
    client, admin_user, receiver, publish
):
    client.force_login(admin_user)
    endpoint, secret = endpoint_for(receiver.url())
    publish()
    deliver()
    page = client.get("/admin/webhooks/webhookendpoint/")
    assert page.status_code == 200 and receiver.url() in page.content.decode()
    detail = client.get(f"/admin/webhooks/webhookendpoint/{endpoint.pk}/change/").content.decode()
    assert "config.published" in detail and secret not in detail
    deliveries = client.get("/admin/webhooks/delivery/").content.decode()
    assert "config.published" in deliveries and "delivered" in deliveries
    client.post(
        "/admin/webhooks/webhookendpoint/",
        {"action": "send_test_event", "_selected_action": [endpoint.pk]},
    )
    client.post(
        "/admin/webhooks/delivery/",
        {
            "action": "send_again",
            "_selected_action": [Delivery.objects.get(event_type="config.published").pk],
        },
    )
    deliver()
    # In the order they were asked for.
    assert [r.event["type"] for r in receiver.received()] == [
        "config.published",
        "webhook.test",
        "config.published",
    ]


def test_emit_refuses_an_unknown_event_type(db):
    with pytest.raises(ValueError, match="unknown event type"):
        emit("config.publishd", {}, None)


def test_a_try_whose_endpoint_was_deleted_meanwhile_records_nothing(receiver, publish):
    endpoint, _ = endpoint_for(receiver.url())
    publish()
    delivery, endpoint_id = Delivery.objects.get(), endpoint.pk
    endpoint.delete()
    assert job.record(endpoint_id, delivery, job.Attempt(200), timezone.now()) is False
    assert not Delivery.objects.exists()


def test_a_pass_stops_when_the_runner_stops_and_lets_its_endpoint_go(receiver, publish):
    endpoint, _ = endpoint_for(receiver.url())
    publish()
    publish(URL + "/2")
    ((endpoint_id, token),) = job.claim_endpoints(timezone.now(), 10)
    stopping = threading.Event()
    stopping.set()
    assert job.deliver_endpoint(endpoint_id, token, timezone.now, stopping) == 0
    assert receiver.received() == []
    # Released at once: the next pass, in any process, goes on without waiting for the lease.
    assert WebhookEndpoint.objects.get().claimed_until is None
    assert deliver() == 1 and len(receiver.received()) == 2


def test_a_stopping_runner_tells_the_delivery_pool():
    (delivery_job,) = [each for each in JOBS if each.name == job.DELIVERY_JOB]
    assert delivery_job.stop is job.stop_deliveries
    runner = JobRunner(jobs=(Job("deliver", lambda: 3600.0, lambda: None, job.stop_deliveries),))
    runner.start()
    runner.halt()
    assert job.POOL.stopping.is_set()
    job.POOL.stopping.clear()
