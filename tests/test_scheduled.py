"""Changes scheduled for a time: made with `publish_at` (202), listed, cancelled by their author
or an operator, and published by the periodic job at their time through the same path as any
publish, or found stale, expired or refused instead; once, however many processes run it."""

import json
import threading
from datetime import datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from apps.accounts.roles import APPROVER, EDITOR, OPERATOR, VIEWER
from apps.audit.models import AuditEntry
from apps.changes.models import ChangeRequest, ScheduledChange
from apps.changes.scheduling import publish_due_changes
from apps.configs.models import ConfigVersion
from apps.rollouts.models import Rollout
from tests.support.clients import api_as, client_for
from tests.support.scopes import make_two_by_two, set_approvals, user_with

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/task"
NEW_URL = "http://upstream.example/new"


def ahead(**delta) -> str:
    return (timezone.now() + timedelta(**delta)).isoformat()


@pytest.fixture
def editor():
    return client_for("editor@example.com", EDITOR)


@pytest.fixture
def v1(publish):
    return publish(URL, 30)


def schedule(client, path: str = "/config/admin", method: str = "put", **fields) -> dict:
    fields.setdefault("publish_at", ahead(hours=1))
    answer = getattr(client, method)(path, fields, format="json")
    assert answer.status_code == 202, answer.content
    return answer.json()


def at_its_time(scheduled: dict, seconds: float = 0.5):
    """The job's step as it runs `seconds` after the change's time."""
    stored = ScheduledChange.objects.get(pk=scheduled["id"])
    return publish_due_changes(now=stored.publish_at + timedelta(seconds=seconds))


def versions() -> list[tuple]:
    return list(ConfigVersion.objects.order_by("version").values_list("version", "config_url"))


def audited(action: str) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action=action).order_by("id"))


# Scheduling -------------------------------------------------------------------------------


def test_a_change_with_publish_at_is_202_and_stored_not_published(editor, v1):
    when = ahead(days=2)
    answer = editor.put("/config/admin", {"config_url": NEW_URL, "publish_at": when}, "json")
    assert answer.status_code == 202, answer.content
    body = answer.json()
    scheduled = ScheduledChange.objects.get()
    assert body["id"] == scheduled.pk
    assert body["url"] == f"/apps/default/envs/production/config/admin/scheduled/{scheduled.pk}"
    assert answer["Location"] == body["url"]
    assert (body["state"], body["base_version"], body["author"]) == (
        "scheduled",
        1,
        "editor@example.com",
    )
    # A PUT's missing field is filled in from the version it is based on.
    assert (body["config_url"], body["pooling_interval"]) == (NEW_URL, 30)
    assert datetime.fromisoformat(body["publish_at"]) == scheduled.publish_at
    assert scheduled.publish_at == datetime.fromisoformat(when)
    assert versions() == [(1, URL)]
    (entry,) = audited(AuditEntry.SCHEDULED_CREATED)
    assert entry.actor == "editor@example.com"
    assert datetime.fromisoformat(entry.detail["publish_at"]) == scheduled.publish_at


def test_a_first_version_may_be_scheduled_with_post(editor):
    body = schedule(editor, method="post", config_url=URL, pooling_interval=30)
    assert body["base_version"] == 0
    assert at_its_time(body)[0].published_version == 1
    assert versions() == [(1, URL)]


def test_scheduling_the_current_content_schedules_nothing(editor, v1):
    answer = editor.put("/config/admin", {"config_url": URL, "publish_at": ahead(hours=1)}, "json")
    assert answer.status_code == 200
    assert answer.json()["version"] == 1
    assert not ScheduledChange.objects.exists()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"publish_at": "2031-01-01T10:00:00"}, "publish_at"),  # no offset
        ({"publish_at": "tomorrow"}, "publish_at"),
        ({"publish_at": 1893456000}, "publish_at"),
        ({"publish_at": "2031-02-30T10:00:00+00:00"}, "publish_at"),
        ({"publish_at": "past"}, "publish_at"),
        ({"publish_at": "beyond"}, "publish_at"),
        ({"config_url": "ftp://upstream.example/"}, "config_url"),
        ({"pooling_interval": 5}, "pooling_interval"),
        ({"emergency": True, "reason": "now"}, "publish_at"),
        ({"rollout": {"waves": [100], "preflight": True}}, "publish_at"),
    ],
)
def test_a_bad_schedule_is_400_and_stores_nothing(editor, v1, fields, field):
    fields = {"config_url": NEW_URL, "publish_at": ahead(hours=1), **fields}
    if fields["publish_at"] == "past":
        fields["publish_at"] = ahead(seconds=-1)
    if fields["publish_at"] == "beyond":
        fields["publish_at"] = ahead(days=90, minutes=1)
    before = AuditEntry.objects.count()
    answer = editor.put("/config/admin", fields, "json")
    assert answer.status_code == 400, answer.content
    assert field in answer.json()
    assert not ScheduledChange.objects.exists()
    assert not ChangeRequest.objects.exists()
    assert versions() == [(1, URL)]
    assert AuditEntry.objects.count() == before


def test_an_if_match_that_is_not_current_is_412_and_stores_nothing(editor, v1):
    answer = editor.put(
        "/config/admin",
        {"pooling_interval": 60, "publish_at": ahead(hours=1)},
        "json",
        HTTP_IF_MATCH='"7"',
    )
    assert answer.status_code == 412
    assert not ScheduledChange.objects.exists()


def test_the_list_and_one_scheduled_change_are_read_by_any_role(editor, v1):
    later = schedule(editor, config_url=NEW_URL, publish_at=ahead(hours=2))
    sooner = schedule(editor, pooling_interval=60, publish_at=ahead(hours=1))
    viewer = client_for("viewer@example.com", VIEWER)
    listed = viewer.get("/config/admin/scheduled")
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()["results"]] == [sooner["id"], later["id"]]
    one = viewer.get(f"/config/admin/scheduled/{later['id']}")
    assert one.status_code == 200
    assert one.json() == later
    assert viewer.get("/config/admin/scheduled?state=published").json()["results"] == []
    assert viewer.get("/config/admin/scheduled?state=nonsense").status_code == 400
    assert viewer.get("/config/admin/scheduled/999").status_code == 404


# Cancelling -------------------------------------------------------------------------------


def cancel(client, scheduled: dict, prefix: str = ""):
    path = f"{prefix}/config/admin/scheduled/{scheduled['id']}/cancel"
    return client.post(path, {"comment": "not now"}, format="json")


def test_its_author_cancels_it_and_nothing_is_published(editor, v1):
    scheduled = schedule(editor, config_url=NEW_URL)
    answer = cancel(editor, scheduled)
    assert answer.status_code == 200, answer.content
    assert (answer.json()["state"], answer.json()["reason"]) == ("cancelled", "not now")
    assert answer.json()["decided_by"] == "editor@example.com"
    (entry,) = audited(AuditEntry.SCHEDULED_CANCELLED)
    assert entry.actor == "editor@example.com"
    assert at_its_time(scheduled) == []
    assert versions() == [(1, URL)]
    # Once decided, there is nothing left to cancel.
    assert cancel(editor, scheduled).status_code == 409


def test_an_operator_cancels_anyones(editor, v1):
    scheduled = schedule(editor, config_url=NEW_URL)
    operator = client_for("operator@example.com", OPERATOR)
    assert cancel(operator, scheduled).status_code == 200
    assert ScheduledChange.objects.get().state == "cancelled"


@pytest.mark.parametrize("role", [EDITOR, VIEWER, APPROVER])
def test_nobody_else_cancels_it(editor, v1, role):
    scheduled = schedule(editor, config_url=NEW_URL)
    other = client_for(f"other-{role}@example.com", role)
    answer = cancel(other, scheduled)
    assert answer.status_code == 403
    assert answer.json()["required_role"] == OPERATOR
    assert ScheduledChange.objects.get().state == "scheduled"
    assert not audited(AuditEntry.SCHEDULED_CANCELLED)


# Scopes -----------------------------------------------------------------------------------


def test_the_scoped_twin_schedules_in_its_scope_and_another_scopes_editor_is_403():
    scopes = make_two_by_two()
    staging = "/apps/payments/envs/staging"
    editor = api_as(user_with(EDITOR, "payments", "staging"))
    body = schedule(editor, f"{staging}/config/admin", "post", config_url=URL, pooling_interval=30)
    assert body["url"] == f"{staging}/config/admin/scheduled/{body['id']}"
    assert ScheduledChange.objects.get().scope == scopes[("payments", "staging")]
    assert editor.get(f"{staging}/config/admin/scheduled").json()["count"] == 1
    assert editor.get(body["url"]).status_code == 200
    # Not in another scope's list, nor reachable through its routes.
    elsewhere = "/apps/search/envs/staging/config/admin/scheduled"
    search_editor = api_as(user_with(EDITOR, "search", "staging"))
    assert search_editor.get(elsewhere).json()["count"] == 0
    assert search_editor.get(f"{elsewhere}/{body['id']}").status_code == 404
    # Another scope's editor may neither schedule nor cancel here.
    refused = search_editor.post(
        f"{staging}/config/admin",
        {"config_url": URL, "pooling_interval": 45, "publish_at": ahead(hours=1)},
        format="json",
    )
    assert refused.status_code == 403
    assert cancel(search_editor, body, staging).status_code == 403
    assert ScheduledChange.objects.count() == 1
    at_its_time(body)
    assert ConfigVersion.objects.get().scope == scopes[("payments", "staging")]


# Approvals --------------------------------------------------------------------------------


@pytest.fixture
def approvals(v1):
    set_approvals(1)


def test_approved_before_its_time_it_is_published_at_its_time_not_at_approval(editor, approvals):
    scheduled = schedule(editor, config_url=NEW_URL)
    change_id = scheduled["change_request"]
    change = editor.get(f"/config/admin/changes/{change_id}").json()
    assert (change["state"], change["publish_at"]) == ("pending", scheduled["publish_at"])
    approver = client_for("approver@example.com", APPROVER)
    approved = approver.post(f"/config/admin/changes/{change_id}/approve", {}, format="json")
    assert approved.status_code == 200, approved.content
    assert (approved.json()["state"], approved.json()["published_version"]) == ("approved", None)
    assert versions() == [(1, URL)]
    # Not before its time.
    assert at_its_time(scheduled, seconds=-1) == []
    assert versions() == [(1, URL)]
    (published,) = at_its_time(scheduled)
    assert (published.state, published.published_version) == ("published", 2)
    assert versions() == [(1, URL), (2, NEW_URL)]
    change = ChangeRequest.objects.get()
    assert (change.state, change.published_version) == ("published", 2)
    entry = audited(AuditEntry.CONFIG_UPDATED)[-1]
    assert entry.detail["change_request"] == change_id
    assert entry.detail["approvers"] == ["approver@example.com"]
    assert entry.detail["scheduled_change"] == scheduled["id"]
    assert ConfigVersion.objects.get(version=2).created_by.email == "editor@example.com"


def test_unapproved_at_its_time_it_expires_and_says_so(editor, approvals):
    scheduled = schedule(editor, config_url=NEW_URL)
    (expired,) = at_its_time(scheduled)
    assert expired.state == "expired"
    assert "not approved before its time" in expired.reason
    assert ChangeRequest.objects.get().state == "expired"
    assert versions() == [(1, URL)]
    (entry,) = audited(AuditEntry.SCHEDULED_EXPIRED)
    assert (entry.detail["approvals"], entry.detail["approvals_required"]) == (0, 1)
    answer = editor.get(f"/config/admin/scheduled/{scheduled['id']}").json()
    assert answer["state"] == "expired"
    # An expired request is decided: nobody approves it afterwards.
    approver = client_for("approver@example.com", APPROVER)
    late = approver.post(
        f"/config/admin/changes/{scheduled['change_request']}/approve", {}, format="json"
    )
    assert late.status_code == 409


def test_a_rejected_request_cancels_its_scheduled_change(editor, approvals):
    scheduled = schedule(editor, config_url=NEW_URL)
    approver = client_for("approver@example.com", APPROVER)
    path = f"/config/admin/changes/{scheduled['change_request']}/reject"
    assert approver.post(path, {"comment": "no"}, format="json").status_code == 200
    assert ScheduledChange.objects.get().state == "cancelled"
    assert at_its_time(scheduled) == []


def test_cancelling_a_scheduled_change_cancels_its_request(editor, approvals):
    scheduled = schedule(editor, config_url=NEW_URL)
    assert cancel(editor, scheduled).status_code == 200
    assert ChangeRequest.objects.get().state == "cancelled"


# The job ----------------------------------------------------------------------------------


def test_the_job_publishes_a_due_change_through_the_normal_path(editor, v1):
    scheduled = schedule(editor, config_url=NEW_URL, rollout={"waves": [50, 100]})
    # Its time has come (moved, as the clock would).
    ScheduledChange.objects.update(publish_at=timezone.now() - timedelta(seconds=1))
    call_command("run_jobs", "--once")
    # It should have made version 2 by its author, audited, with its rollout started.
    stored = ScheduledChange.objects.get()
    assert (stored.state, stored.published_version) == ("published", 2)
    assert versions() == [(1, URL), (2, NEW_URL)]
    assert ConfigVersion.objects.get(version=2).created_by.email == "editor@example.com"
    entry = audited(AuditEntry.CONFIG_UPDATED)[-1]
    assert entry.actor == "editor@example.com"
    assert entry.detail["scheduled_change"] == scheduled["id"]
    assert entry.detail["after"]["config_url"] == NEW_URL
    rollout = Rollout.objects.get()
    assert (rollout.version, rollout.state, rollout.waves) == (2, "rolling", [50, 100])
    # It should do nothing more on the next step.
    call_command("run_jobs", "--once")
    assert versions() == [(1, URL), (2, NEW_URL)]


def test_a_change_whose_base_is_no_longer_current_goes_stale(editor, v1, publish):
    scheduled = schedule(editor, config_url=NEW_URL)
    publish(URL, 45)
    (stale,) = at_its_time(scheduled)
    assert stale.state == "stale"
    assert "base version 1 is no longer current" in stale.reason
    assert versions() == [(1, URL), (2, URL)]
    (entry,) = audited(AuditEntry.SCHEDULED_STALE)
    assert (entry.detail["base_version"], entry.detail["current_version"]) == (1, 2)


def test_a_scheduled_change_s_outcome_is_an_event_for_the_webhooks(editor, v1, publish):
    from apps.webhooks.models import Delivery
    from apps.webhooks.services import create_endpoint

    create_endpoint(url="https://hooks.example/x", events=["scheduled_change.stale"])
    done = create_endpoint(url="https://hooks.example/y", events=["scheduled_change.published"])[0]
    first = schedule(editor, config_url=NEW_URL)
    publish(URL, 45)
    at_its_time(first)
    (event,) = Delivery.objects.filter(event_type="scheduled_change.stale")
    data = json.loads(event.body)["data"]
    assert (data["scheduled_change"], data["state"], data["base_version"]) == (
        first["id"],
        "stale",
        1,
    )
    assert (data["application"], data["environment"]) == ("default", "production")
    assert data["content"]["config_url"] == NEW_URL and "no longer current" in data["reason"]
    second = schedule(editor, config_url=NEW_URL)
    at_its_time(second)
    (event,) = Delivery.objects.filter(endpoint=done)
    assert json.loads(event.body)["data"]["published_version"] == 3


def test_an_approved_change_whose_base_is_gone_goes_stale(editor, approvals, publish):
    scheduled = schedule(editor, config_url=NEW_URL)
    approver = client_for("approver@example.com", APPROVER)
    path = f"/config/admin/changes/{scheduled['change_request']}/approve"
    assert approver.post(path, {}, format="json").status_code == 200
    publish(URL, 45)
    assert ChangeRequest.objects.get().state == "stale"
    (stale,) = at_its_time(scheduled)
    assert stale.state == "stale"
    assert versions() == [(1, URL), (2, URL)]


def test_a_rollout_in_progress_at_its_time_refuses_it(editor, v1):
    scheduled = schedule(editor, config_url=NEW_URL)
    from apps.configs.actions import publish_config

    publish_config(config_url=URL, pooling_interval=45, rollout={"waves": [50, 100]})
    ScheduledChange.objects.update(base_version=2)  # as if scheduled after that publish
    (failed,) = at_its_time(scheduled)
    assert failed.state == "failed"
    assert "rollout" in failed.reason
    assert not ChangeRequest.objects.exists()
    (entry,) = audited(AuditEntry.SCHEDULED_FAILED)
    assert entry.detail["reason"] == failed.reason
    assert versions() == [(1, URL), (2, URL)]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_runners_at_the_same_time_publish_it_once():
    from apps.configs.actions import publish_config

    publish_config(config_url=URL, pooling_interval=30)
    author = client_for("editor@example.com", EDITOR)
    schedule(author, config_url=NEW_URL)
    ScheduledChange.objects.update(publish_at=timezone.now() - timedelta(seconds=1))
    runners = 4
    barrier = threading.Barrier(runners)
    decided: list = []

    def run() -> None:
        try:
            barrier.wait()
            for _ in range(3):
                decided.extend(publish_due_changes())
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(decided) == 1
    assert versions() == [(1, URL), (2, NEW_URL)]
    assert ScheduledChange.objects.get().state == "published"
    assert AuditEntry.objects.filter(detail__has_key="scheduled_change").count() == 1


# The admin --------------------------------------------------------------------------------


def cancel_in_the_admin(client, user, scheduled: dict):
    client.force_login(user)
    return client.post(
        "/admin/changes/scheduledchange/",
        {"action": "cancel_scheduled_changes", "_selected_action": [scheduled["id"]]},
        follow=True,
    )


def test_the_admin_lists_them_and_cancels_for_the_author_only(client, editor, v1):
    scheduled = schedule(editor, config_url=NEW_URL)
    other = client_for("other@example.com", EDITOR).user
    client.force_login(other)
    listing = client.get("/admin/changes/scheduledchange/?state__exact=scheduled")
    assert listing.status_code == 200
    assert NEW_URL in listing.content.decode()
    refused = cancel_in_the_admin(client, other, scheduled)
    assert "Only its author or an operator" in refused.content.decode()
    assert ScheduledChange.objects.get().state == "scheduled"
    done = cancel_in_the_admin(client, editor.user, scheduled)
    assert "Cancelled 1 scheduled change" in done.content.decode()
    assert ScheduledChange.objects.get().state == "cancelled"
    assert audited(AuditEntry.SCHEDULED_CANCELLED)[0].actor == "editor@example.com"


def test_the_scope_page_shows_the_changes_to_come(client, editor, v1):
    scheduled = schedule(editor, config_url=NEW_URL)
    client.force_login(editor.user)
    page = client.get("/admin/scopes/application/default/envs/production/").content.decode()
    assert f'id="scope-scheduled-{scheduled["id"]}"' in page
    cancel(editor, scheduled)
    page = client.get("/admin/scopes/application/default/envs/production/").content.decode()
    assert f'id="scope-scheduled-{scheduled["id"]}"' not in page


def test_an_approved_change_refused_at_its_time_closes_its_request(editor, approvals):
    scheduled = schedule(editor, config_url=NEW_URL)
    approver = client_for("approver@example.com", APPROVER)
    path = f"/config/admin/changes/{scheduled['change_request']}/approve"
    assert approver.post(path, {}, format="json").status_code == 200
    Rollout.objects.create(
        scope=ScheduledChange.objects.get().scope,
        version=1,
        previous_version=1,
        waves=[50, 100],
        state=Rollout.ROLLING,
    )
    (failed,) = at_its_time(scheduled)
    assert failed.state == "failed"
    change = ChangeRequest.objects.get()
    assert (change.state, change.decision_comment) == ("cancelled", failed.reason)
    assert versions() == [(1, URL)]
