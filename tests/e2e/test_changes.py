"""A change request through real processes: with approvals required, an editor's change reaches
no agent until another user approves it; then the worker serves it. A stale request is refused,
and a superuser's emergency reaches the worker at once."""

import time

import pytest
import requests

from apps.accounts.models import User
from apps.accounts.roles import APPROVER, EDITOR
from apps.accounts.services import set_roles
from apps.audit.models import AuditEntry
from tests.e2e.conftest import wait_for_version, worker_version
from tests.support.scopes import set_approvals

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PASSWORD = "Long-Pass-7!"


def session_of(url: str, email: str, *roles: str, superuser: bool = False) -> requests.Session:
    user = User.objects.create_user(email=email, password=PASSWORD, is_superuser=superuser)
    set_roles(user, roles)
    session = requests.Session()
    answer = session.post(f"{url}/login", json={"email": email, "password": PASSWORD}, timeout=10)
    assert answer.status_code == 200, answer.text
    expected = ["viewer", "editor", "approver", "operator"] if superuser else list(roles)
    assert answer.json()["roles"] == expected
    session.headers["Authorization"] = f"Bearer {answer.json()['access']}"
    return session


def test_an_approved_change_reaches_the_worker_and_an_unapproved_one_does_not(stack, upstream):
    set_approvals(1)  # the environment's rule, read by the controller process
    _, url = stack.controller(None)
    _, worker = stack.worker()
    stack.agent(url, [worker])
    editor = session_of(url, "editor@example.com", EDITOR)
    approver = session_of(url, "approver@example.com", APPROVER)
    root = session_of(url, "root@example.com", superuser=True)

    # Version 1 through a request too: nothing is published before the approval.
    first = editor.post(
        f"{url}/config/admin",
        json={"config_url": upstream.url("/text"), "pooling_interval": 30},
        timeout=15,
    )
    assert first.status_code == 202, first.text
    assert (
        approver.post(
            f"{url}/config/admin/changes/{first.json()['id']}/approve", json={}, timeout=15
        ).json()["published_version"]
        == 1
    )
    wait_for_version([worker], 1, timeout=30)

    # An editor's change: 202, and the agent's worker stays on version 1.
    proposed = editor.put(
        f"{url}/config/admin", json={"config_url": upstream.url("/json")}, timeout=15
    )
    assert proposed.status_code == 202, proposed.text
    change = proposed.json()
    assert (change["state"], change["base_version"]) == ("pending", 1)
    time.sleep(3)  # long enough for a published change to have reached the worker
    assert worker_version(worker) == 1
    assert requests.get(f"{worker}/hit", timeout=10).text == "203.0.113.7\n"

    # The author may not approve it; another approver may, and the worker serves it.
    own = editor.post(f"{url}/config/admin/changes/{change['id']}/approve", json={}, timeout=15)
    assert own.status_code == 403
    approved = approver.post(
        f"{url}/config/admin/changes/{change['id']}/approve", json={"comment": "ok"}, timeout=15
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["published_version"] == 2
    wait_for_version([worker], 2, timeout=30)
    hit = requests.get(f"{worker}/hit", timeout=10)
    assert (hit.status_code, hit.text) == (200, '{"ok": true}')
    assert hit.headers["X-Config-Version"] == "2"

    # A request overtaken by an emergency publish is stale: 409, and it never ships.
    late = editor.put(f"{url}/config/admin", json={"pooling_interval": 120}, timeout=15).json()
    emergency = root.put(
        f"{url}/config/admin",
        json={"config_url": upstream.url("/text"), "emergency": True, "reason": "bad upstream"},
        timeout=15,
    )
    assert emergency.status_code == 200, emergency.text
    assert emergency.json()["version"] == 3
    wait_for_version([worker], 3, timeout=30)
    stale = approver.post(f"{url}/config/admin/changes/{late['id']}/approve", json={}, timeout=15)
    assert stale.status_code == 409
    assert stale.json()["detail"] == f"Change request {late['id']} is stale, not pending."
    assert approver.get(f"{url}/config/admin", timeout=10).json()["pooling_interval"] == 30
    entry = AuditEntry.objects.get(action=AuditEntry.CONFIG_EMERGENCY)
    assert (entry.actor, entry.detail["reason"]) == ("root@example.com", "bad upstream")
