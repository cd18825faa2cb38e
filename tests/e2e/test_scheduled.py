"""A scheduled change through a real controller: the schedule is in the database, so a
controller stopped and started again between the scheduling and the time still publishes it, and
within 2 s of its time."""

import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.conftest import Admin

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

URL = "http://upstream.example/task"
NEW_URL = "http://upstream.example/scheduled"
# How far ahead the change is scheduled: time enough to stop and start the controller first
# (about 2 s here, more on a busy machine).
AHEAD = timedelta(seconds=5)


def current(admin: Admin) -> dict:
    answer = admin.session.get(f"{admin.url}/config/admin", timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_scheduled_change_is_published_within_2_s_of_its_time_after_a_restart(stack, admin_user):
    controller, url = stack.controller(None)
    admin = Admin(url)
    assert admin.create(URL).status_code == 201
    publish_at = datetime.now(UTC) + AHEAD
    scheduled = admin.session.put(
        f"{url}/config/admin",
        json={"config_url": NEW_URL, "publish_at": publish_at.isoformat()},
        timeout=10,
    )
    assert scheduled.status_code == 202, scheduled.text
    assert scheduled.json()["state"] == "scheduled"

    controller.stop()
    _, url = stack.controller(None)
    admin = Admin(url)
    assert datetime.now(UTC) < publish_at, "the restart took longer than the schedule allowed"

    seen = None
    deadline = publish_at + timedelta(seconds=10)
    while datetime.now(UTC) < deadline:
        config = current(admin)
        now = datetime.now(UTC)
        if config["version"] == 2:
            seen = now
            break
        time.sleep(0.05)
    # It should be published, not before its time, and within 2 s of it.
    assert seen is not None, "the scheduled change was not published"
    assert config["config_url"] == NEW_URL
    assert datetime.fromisoformat(config["created_at"]) >= publish_at
    assert seen - publish_at < timedelta(seconds=2), seen - publish_at
    listed = admin.session.get(f"{url}/config/admin/scheduled", timeout=5).json()["results"]
    assert [(item["state"], item["published_version"]) for item in listed] == [("published", 2)]
