"""Change requests through the API: proposing with approvals required, approving (never one's
own), rejecting, cancelling, staleness, and the superuser's emergency publish."""

import pytest
from django.test import Client

from apps.accounts.models import User
from apps.accounts.roles import APPROVER, EDITOR, OPERATOR, VIEWER
from apps.accounts.services import set_roles
from apps.audit.models import AuditEntry
from apps.changes.models import ChangeRequest
from apps.configs.models import ConfigVersion
from tests.support.clients import client_for
from tests.support.scopes import set_approvals

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/task"


@pytest.fixture
def approvals():
    set_approvals(1)


@pytest.fixture
def editor():
    return client_for("editor@example.com", EDITOR)


@pytest.fixture
def approver():
    return client_for("approver@example.com", APPROVER)


@pytest.fixture
def second_approver():
    return client_for("approver2@example.com", APPROVER)


@pytest.fixture
def superuser():
    return client_for("root@example.com", superuser=True)


@pytest.fixture
def v1(publish):
    return publish(URL, 30)


def propose(client, **fields):
    answer = client.put("/config/admin", fields, format="json")
    assert answer.status_code == 202, answer.content
    return answer.json()


def decide(client, change_id: int, decision: str, comment: str = ""):
    return client.post(
        f"/config/admin/changes/{change_id}/{decision}", {"comment": comment}, format="json"
    )


def versions() -> list[tuple]:
    return list(
        ConfigVersion.objects.order_by("version").values_list(
            "version", "config_url", "pooling_interval"
        )
    )


def actions() -> list[str]:
    return list(AuditEntry.objects.order_by("id").values_list("action", flat=True))


# Proposing --------------------------------------------------------------------------------


def test_with_approvals_off_an_editor_publishes_directly(editor, v1):
    answer = editor.put("/config/admin", {"pooling_interval": 60}, format="json")
    assert answer.status_code == 200
    assert answer.json()["version"] == 2
    assert not ChangeRequest.objects.exists()


def test_with_approvals_on_an_editors_put_is_a_pending_request_and_publishes_nothing(
    approvals, editor, v1, agent_api
):
    answer = editor.put("/config/admin", {"pooling_interval": 60}, format="json")
    assert answer.status_code == 202
    body = answer.json()
    assert body == {
        "id": body["id"],
        "state": "pending",
        "base_version": 1,
        "config_url": URL,
        "pooling_interval": 60,
        "rollout": None,
        "author": "editor@example.com",
        "approvals": [],
        "created_at": body["created_at"],
        "decided_by": None,
        "decided_at": None,
        "comment": "",
        "published_version": None,
        "publish_at": None,
    }
    assert versions() == [(1, URL, 30)]
    # The agents are still told version 1.
    assert agent_api.get("/config/version").json()["version"] == 1
    entry = AuditEntry.objects.get(action=AuditEntry.CHANGE_PROPOSED)
    assert entry.actor == "editor@example.com"
    assert entry.target == f"change request #{body['id']}"
    assert entry.detail["proposed"]["pooling_interval"] == 60
    assert entry.detail["current"]["version"] == 1


def test_a_post_before_any_config_proposes_version_one(approvals, editor):
    answer = editor.post(
        "/config/admin", {"config_url": URL, "pooling_interval": 45}, format="json"
    )
    assert answer.status_code == 202
    assert answer.json()["base_version"] == 0
    assert versions() == []


def test_a_put_before_any_config_is_404_and_stores_nothing(approvals, editor):
    assert editor.put("/config/admin", {"pooling_interval": 45}, format="json").status_code == 404
    assert not ChangeRequest.objects.exists()


def test_proposing_the_current_content_answers_the_current_config(approvals, editor, v1):
    answer = editor.put("/config/admin", {"pooling_interval": 30}, format="json")
    assert answer.status_code == 200
    assert answer.json()["version"] == 1
    assert not ChangeRequest.objects.exists()


def test_a_bad_proposal_is_400_and_stores_nothing(approvals, editor, v1):
    answer = editor.put("/config/admin", {"pooling_interval": 5}, format="json")
    assert answer.status_code == 400
    assert "pooling_interval" in answer.json()
    assert not ChangeRequest.objects.exists()


def test_a_superuser_without_emergency_proposes_like_anyone(approvals, superuser, v1):
    assert (
        superuser.put("/config/admin", {"pooling_interval": 60}, format="json").status_code == 202
    )


# Approving --------------------------------------------------------------------------------


def test_self_approval_is_403_even_for_an_editor_who_is_also_approver(approvals, v1):
    both = client_for("both@example.com", EDITOR, APPROVER)
    change = propose(both, pooling_interval=60)
    answer = decide(both, change["id"], "approve")
    assert answer.status_code == 403
    assert answer.json() == {"detail": "Nobody approves their own change request."}
    assert ChangeRequest.objects.get().approvals.count() == 0
    assert versions() == [(1, URL, 30)]


def test_another_approvers_approval_publishes_the_request(
    approvals, editor, approver, v1, agent_api, django_capture_on_commit_callbacks
):
    change = propose(editor, config_url=URL + "/new")
    with django_capture_on_commit_callbacks(execute=True):
        answer = decide(approver, change["id"], "approve", "looks right")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["state"] == "published"
    assert body["published_version"] == 2
    assert body["decided_by"] == "approver@example.com"
    assert [(a["approver"], a["comment"]) for a in body["approvals"]] == [
        ("approver@example.com", "looks right")
    ]
    assert versions() == [(1, URL, 30), (2, URL + "/new", 30)]
    # The author made the version; the approver's approval published it.
    assert ConfigVersion.objects.get(version=2).created_by.email == "editor@example.com"
    assert agent_api.get("/config/version").json()["version"] == 2
    published = AuditEntry.objects.get(action=AuditEntry.CONFIG_UPDATED)
    assert published.actor == "approver@example.com"
    assert published.detail["change_request"] == change["id"]
    assert published.detail["author"] == "editor@example.com"
    assert published.detail["approvers"] == ["approver@example.com"]
    assert actions()[-3:] == [
        AuditEntry.CHANGE_PROPOSED,
        AuditEntry.CHANGE_APPROVED,
        AuditEntry.CONFIG_UPDATED,
    ]


def test_the_first_config_is_published_through_a_request_too(approvals, editor, approver):
    answer = editor.post(
        "/config/admin", {"config_url": URL, "pooling_interval": 45}, format="json"
    )
    decided = decide(approver, answer.json()["id"], "approve")
    assert decided.json()["published_version"] == 1
    assert versions() == [(1, URL, 45)]
    assert AuditEntry.objects.filter(action=AuditEntry.CONFIG_CREATED).count() == 1


def test_two_approvals_required_means_two_different_approvers(
    approvals, editor, approver, second_approver, v1
):
    set_approvals(2)
    change = propose(editor, pooling_interval=60)
    first = decide(approver, change["id"], "approve")
    assert first.status_code == 200
    assert first.json()["state"] == "pending"
    assert versions() == [(1, URL, 30)]
    again = decide(approver, change["id"], "approve")
    assert again.status_code == 409
    assert ChangeRequest.objects.get().approvals.count() == 1
    second = decide(second_approver, change["id"], "approve")
    assert second.json()["state"] == "published"
    assert second.json()["published_version"] == 2
    assert len(second.json()["approvals"]) == 2


@pytest.mark.parametrize("role", [VIEWER, EDITOR, OPERATOR])
def test_only_approvers_approve_or_reject(approvals, editor, v1, role):
    other = client_for(f"{role}-2@example.com", role)
    change = propose(editor, pooling_interval=60)
    for decision in ("approve", "reject"):
        answer = decide(other, change["id"], decision)
        assert answer.status_code == 403
        assert answer.json()["required_role"] == APPROVER
    assert ChangeRequest.objects.get().state == "pending"


# Staleness --------------------------------------------------------------------------------


def test_publishing_one_request_makes_the_others_on_the_same_base_stale(
    approvals, editor, approver, v1
):
    first = propose(editor, pooling_interval=60)
    second = propose(editor, pooling_interval=90)
    decide(approver, first["id"], "approve")
    assert ChangeRequest.objects.get(pk=second["id"]).state == "stale"
    answer = decide(approver, second["id"], "approve")
    assert answer.status_code == 409
    assert answer.json() == {"detail": f"Change request {second['id']} is stale, not pending."}
    assert versions()[-1] == (2, URL, 60)
    published = AuditEntry.objects.get(action=AuditEntry.CONFIG_UPDATED)
    assert published.detail["made_stale"] == [second["id"]]


def test_a_request_found_stale_on_approval_is_409_names_the_current_version_and_is_kept_stale(
    approvals, editor, approver, v1, publish
):
    change = propose(editor, pooling_interval=60)
    publish(URL, 45)  # version 2, and the request is marked stale with it
    # As if the marking had been lost: the approval itself must still find it out.
    ChangeRequest.objects.filter(pk=change["id"]).update(state="pending")
    answer = decide(approver, change["id"], "approve")
    assert answer.status_code == 409
    assert answer.json()["current_version"] == 2
    assert "based on version 1" in answer.json()["detail"]
    stored = ChangeRequest.objects.get()
    assert stored.state == "stale"
    assert stored.approvals.count() == 0
    assert versions() == [(1, URL, 30), (2, URL, 45)]
    entry = AuditEntry.objects.get(action=AuditEntry.CHANGE_STALE)
    assert entry.actor == "approver@example.com"
    assert entry.detail == {"current_version": 2}


def test_a_rollback_also_makes_pending_requests_stale(approvals, editor, v1, publish):
    publish(URL, 45)
    change = propose(editor, pooling_interval=60)
    operator = client_for("op@example.com", OPERATOR)
    assert operator.post("/config/admin/rollback", {"version": 1}, format="json").status_code == 201
    assert ChangeRequest.objects.get(pk=change["id"]).state == "stale"


# Rejecting and cancelling -----------------------------------------------------------------


def test_an_approver_rejects_with_a_comment(approvals, editor, approver, v1):
    change = propose(editor, pooling_interval=60)
    answer = decide(approver, change["id"], "reject", "not on a Friday")
    assert answer.status_code == 200
    body = answer.json()
    assert (body["state"], body["comment"], body["decided_by"]) == (
        "rejected",
        "not on a Friday",
        "approver@example.com",
    )
    assert decide(approver, change["id"], "approve").status_code == 409
    assert versions() == [(1, URL, 30)]
    entry = AuditEntry.objects.get(action=AuditEntry.CHANGE_REJECTED)
    assert entry.detail == {"comment": "not on a Friday"}


def test_nobody_rejects_their_own_request(approvals, v1):
    both = client_for("both@example.com", EDITOR, APPROVER)
    change = propose(both, pooling_interval=60)
    assert decide(both, change["id"], "reject").status_code == 403
    assert ChangeRequest.objects.get().state == "pending"


def test_the_author_cancels_and_another_editor_may_not(approvals, editor, v1, superuser):
    change = propose(editor, pooling_interval=60)
    other = client_for("editor2@example.com", EDITOR)
    answer = decide(other, change["id"], "cancel")
    assert answer.status_code == 403
    assert answer.json() == {"detail": "Only the author cancels a change request."}
    answer = decide(editor, change["id"], "cancel", "wrong interval")
    assert answer.status_code == 200
    assert answer.json()["state"] == "cancelled"
    assert decide(editor, change["id"], "cancel").status_code == 409
    # A superuser may withdraw anyone's.
    change = propose(editor, pooling_interval=90)
    assert decide(superuser, change["id"], "cancel").json()["state"] == "cancelled"
    assert AuditEntry.objects.filter(action=AuditEntry.CHANGE_CANCELLED).count() == 2


@pytest.mark.parametrize("body", [{"comment": ["x"]}, {"comment": "x" * 1001}])
def test_a_bad_comment_is_400_and_changes_nothing(approvals, editor, approver, v1, body):
    change = propose(editor, pooling_interval=60)
    answer = approver.post(f"/config/admin/changes/{change['id']}/reject", body, format="json")
    assert answer.status_code == 400
    assert ChangeRequest.objects.get().state == "pending"


def test_deciding_an_unknown_request_is_404(approvals, approver):
    assert decide(approver, 999, "approve").status_code == 404
    assert approver.get("/config/admin/changes/999").status_code == 404


# Reading ----------------------------------------------------------------------------------


def test_the_list_filters_by_state_and_the_detail_has_the_diff(approvals, editor, approver, v1):
    first = propose(editor, pooling_interval=60)
    second = propose(editor, config_url=URL + "/b", pooling_interval=90)
    decide(approver, first["id"], "reject")
    viewer = client_for("viewer@example.com", VIEWER)
    listing = viewer.get("/config/admin/changes").json()
    assert [row["id"] for row in listing["results"]] == [second["id"], first["id"]]
    pending = viewer.get("/config/admin/changes?state=pending").json()["results"]
    assert [row["id"] for row in pending] == [second["id"]]
    assert viewer.get("/config/admin/changes?state=bogus").status_code == 400
    detail = viewer.get(f"/config/admin/changes/{second['id']}").json()
    assert detail["current_version"] == 1
    assert detail["diff"] == [
        {"field": "config_url", "current": URL, "proposed": URL + "/b"},
        {"field": "pooling_interval", "current": 30, "proposed": 90},
    ]


def test_reading_change_requests_needs_a_role(approvals, editor, v1, api):
    change = propose(editor, pooling_interval=60)
    nobody = client_for("nobody@example.com")
    for path in ("/config/admin/changes", f"/config/admin/changes/{change['id']}"):
        assert nobody.get(path).status_code == 403
        assert api.get(path).status_code == 401


# Emergency --------------------------------------------------------------------------------


def test_a_superusers_emergency_publishes_at_once_and_is_audited(
    approvals, editor, superuser, v1, agent_api, django_capture_on_commit_callbacks
):
    pending = propose(editor, pooling_interval=60)
    with django_capture_on_commit_callbacks(execute=True):
        answer = superuser.put(
            "/config/admin",
            {"config_url": URL + "/fixed", "emergency": True, "reason": "upstream is down"},
            format="json",
        )
    assert answer.status_code == 200, answer.content
    assert answer.json()["version"] == 2
    assert versions()[-1] == (2, URL + "/fixed", 30)
    assert agent_api.get("/config/version").json()["version"] == 2
    entry = AuditEntry.objects.get(action=AuditEntry.CONFIG_EMERGENCY)
    assert entry.actor == "root@example.com"
    assert entry.detail["reason"] == "upstream is down"
    assert entry.detail["after"]["config_url"] == URL + "/fixed"
    assert entry.detail["made_stale"] == [pending["id"]]
    assert ChangeRequest.objects.get(pk=pending["id"]).state == "stale"


def test_an_emergency_post_is_201(approvals, superuser, v1):
    answer = superuser.post(
        "/config/admin",
        {"config_url": URL, "pooling_interval": 120, "emergency": True, "reason": "load"},
        format="json",
    )
    assert answer.status_code == 201
    assert answer.json()["version"] == 2


@pytest.mark.parametrize("role", [EDITOR, APPROVER, OPERATOR])
def test_only_a_superuser_may_publish_in_an_emergency(approvals, v1, role):
    client = client_for(f"{role}-x@example.com", EDITOR, APPROVER, OPERATOR)
    answer = client.put(
        "/config/admin",
        {"pooling_interval": 60, "emergency": True, "reason": "now"},
        format="json",
    )
    assert answer.status_code == 403
    assert answer.json()["required_role"] == "superuser"
    assert versions() == [(1, URL, 30)]
    assert not ChangeRequest.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"pooling_interval": 60, "emergency": True}, "reason"),
        ({"pooling_interval": 60, "emergency": True, "reason": "  "}, "reason"),
        ({"pooling_interval": 60, "reason": "why not"}, "reason"),
        ({"pooling_interval": 60, "emergency": "yes", "reason": "r"}, "emergency"),
        ({"pooling_interval": 60, "emergency": True, "reason": "r" * 501}, "reason"),
    ],
)
def test_a_malformed_emergency_is_400_and_stores_nothing(approvals, superuser, v1, body, field):
    answer = superuser.put("/config/admin", body, format="json")
    assert answer.status_code == 400
    assert field in answer.json()
    assert versions() == [(1, URL, 30)]
    assert not AuditEntry.objects.filter(action=AuditEntry.CONFIG_EMERGENCY).exists()


def test_an_emergency_with_approvals_off_is_still_recorded_as_one(superuser, v1):
    answer = superuser.put(
        "/config/admin", {"pooling_interval": 60, "emergency": True, "reason": "r"}, format="json"
    )
    assert answer.status_code == 200
    assert AuditEntry.objects.filter(action=AuditEntry.CONFIG_EMERGENCY).count() == 1


# The admin's change form --------------------------------------------------------------------


def test_the_admin_form_proposes_when_approvals_are_required(approvals, client, v1):
    editor = User.objects.create_user(email="ed@example.com", password=None)
    set_roles(editor, [EDITOR])
    client.force_login(editor)
    answer = client.post(
        "/admin/configs/configversion/change-config/",
        {"config_url": URL, "pooling_interval": "60"},
        follow=True,
    )
    change = ChangeRequest.objects.get()
    assert f"Change request #{change.pk} awaits approval" in answer.content.decode()
    assert (change.state, change.author, change.pooling_interval) == ("pending", editor, 60)
    assert versions() == [(1, URL, 30)]


def admin_client_for(client, email: str, *roles: str):
    user = User.objects.create_user(email=email, password=None)
    set_roles(user, roles)
    client.force_login(user)
    return user


def test_the_admin_page_shows_the_diff_and_an_approver_approves_with_the_button(
    approvals, client, editor, v1
):
    change = propose(editor, config_url=URL + "/b")
    page = f"/admin/changes/changerequest/{change['id']}/change/"
    # The author sees the diff and may cancel, not approve.
    client.force_login(editor.user)
    html = client.get(page).content.decode()
    assert "/b</strong>" in html
    assert 'id="cancel-form"' in html and 'id="approve-form"' not in html
    admin_client_for(client, "approver@example.com", APPROVER)
    html = client.get(page).content.decode()
    assert 'id="approve-form"' in html and 'id="cancel-form"' not in html
    answer = client.post(
        f"/admin/changes/changerequest/{change['id']}/approve/", {"comment": "fine"}, follow=True
    )
    assert f"change request #{change['id']} is published as version 2" in answer.content.decode()
    assert versions()[-1] == (2, URL + "/b", 30)
    stored = ChangeRequest.objects.get()
    assert stored.approvals.get().comment == "fine"
    # Deciding again is refused with the service's message, and nothing more happens.
    answer = client.post(f"/admin/changes/changerequest/{change['id']}/reject/", follow=True)
    assert "is published, not pending" in answer.content.decode()
    assert ChangeRequest.objects.get().state == "published"


def test_the_admin_refuses_self_approval_with_the_reason(approvals, client, v1):
    user = admin_client_for(client, "both@example.com", EDITOR, APPROVER)
    change = ChangeRequest.objects.create(
        base_version=1, config_url=URL, pooling_interval=60, author=user
    )
    answer = client.post(f"/admin/changes/changerequest/{change.pk}/approve/", follow=True)
    assert "Nobody approves their own change request." in answer.content.decode()
    assert ChangeRequest.objects.get().state == "pending"


def test_the_dashboard_counts_pending_requests_and_shows_an_emergency_in_red(
    approvals, client, editor, superuser, v1
):
    propose(editor, pooling_interval=60)
    propose(editor, pooling_interval=90)
    admin_client_for(client, "viewer@example.com", VIEWER)
    html = client.get("/admin/").content.decode()
    assert '<span class="number">2</span>pending approval' in html
    assert 'id="current-emergency"' not in html
    superuser.put(
        "/config/admin",
        {"pooling_interval": 45, "emergency": True, "reason": "upstream on fire"},
        format="json",
    )
    html = client.get("/admin/").content.decode()
    assert '<span class="number">0</span>pending approval' in html
    assert (
        '<tr class="emergency" id="current-emergency"><th>Emergency publish</th>'
        "<td>by root@example.com, without approval: upstream on fire</td></tr>"
    ) in html
    assert '<tr class="emergency">' in html  # the entry in the last changes


def test_a_proposal_with_an_if_match_that_is_not_current_is_412_and_stores_nothing(
    approvals, editor, v1, publish
):
    publish(URL, 45)
    answer = editor.put(
        "/config/admin", {"pooling_interval": 60}, format="json", HTTP_IF_MATCH='"1"'
    )
    assert answer.status_code == 412
    assert answer.json()["current_version"] == 2
    assert not ChangeRequest.objects.exists()
    fresh = editor.put(
        "/config/admin", {"pooling_interval": 60}, format="json", HTTP_IF_MATCH='"2"'
    )
    assert fresh.status_code == 202


# The admin's emergency publish -----------------------------------------------------------

CHANGE_FORM = "/admin/configs/configversion/change-config/"
EMERGENCY_BUTTON = 'value="Publish now (emergency, bypasses review)" name="_emergency"'


def csrf_client(user) -> Client:
    """A browser's session: CSRF checked as in production, with the token a page of the admin
    gives (its logout form), which every user of the admin has, even one the form refuses."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    browser.get("/admin/")
    browser.csrf_token = browser.cookies["csrftoken"].value
    return browser


def post_emergency(browser: Client, **fields):
    values = {"config_url": URL, "pooling_interval": "90", "reason": "upstream on fire"}
    values.update(fields)
    return browser.post(
        CHANGE_FORM, {**values, "_emergency": "1", "csrfmiddlewaretoken": browser.csrf_token}
    )


def test_a_superuser_publishes_from_the_admin_form_in_an_emergency(
    approvals, superuser, editor, v1, agent_api, django_capture_on_commit_callbacks
):
    pending = propose(editor, pooling_interval=60)
    browser = csrf_client(superuser.user)
    html = browser.get(CHANGE_FORM).content.decode()
    assert EMERGENCY_BUTTON in html and 'name="reason"' in html
    with django_capture_on_commit_callbacks(execute=True):
        answer = post_emergency(browser, reason="  upstream is down  ")
    assert answer.status_code == 302
    assert versions() == [(1, URL, 30), (2, URL, 90)]
    assert agent_api.get("/config/version").json()["version"] == 2
    # The same audit entry as the API's emergency publish.
    entry = AuditEntry.objects.get(action=AuditEntry.CONFIG_EMERGENCY)
    assert entry.actor == "root@example.com"
    assert entry.detail["reason"] == "upstream is down"
    assert entry.detail["after"]["pooling_interval"] == 90
    assert entry.detail["made_stale"] == [pending["id"]]
    assert ChangeRequest.objects.get(pk=pending["id"]).state == "stale"
    page = browser.get(answer.url).content.decode()
    assert "Emergency publish: version 2 is now current, without approval." in page


def test_the_emergency_button_is_offered_to_superusers_only_and_only_with_approvals(
    settings, client, superuser, v1
):
    for roles in ([EDITOR], [EDITOR, APPROVER, OPERATOR]):
        set_approvals(1)
        admin_client_for(client, f"{len(roles)}@example.com", *roles)
        html = client.get(CHANGE_FORM).content.decode()
        assert "_emergency" not in html and 'name="reason"' not in html
    client.force_login(superuser.user)
    assert EMERGENCY_BUTTON in client.get(CHANGE_FORM).content.decode()
    set_approvals(0)
    assert "_emergency" not in client.get(CHANGE_FORM).content.decode()


@pytest.mark.parametrize("roles", [[APPROVER], [EDITOR], [EDITOR, APPROVER, OPERATOR]])
def test_a_forged_emergency_post_from_a_non_superuser_is_403_and_stores_nothing(
    approvals, v1, roles
):
    user = User.objects.create_user(email="forger@example.com", password=None)
    set_roles(user, roles)
    answer = post_emergency(csrf_client(user))
    assert answer.status_code == 403
    assert versions() == [(1, URL, 30)]
    assert not ChangeRequest.objects.exists()
    assert not AuditEntry.objects.filter(action=AuditEntry.CONFIG_EMERGENCY).exists()


def test_an_emergency_post_without_the_csrf_token_is_403(approvals, superuser, v1):
    browser = csrf_client(superuser.user)
    browser.csrf_token = "forged" * 6
    assert post_emergency(browser).status_code == 403
    assert versions() == [(1, URL, 30)]


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"reason": ""}, "reason", "An emergency publish needs a reason."),
        ({"reason": "   "}, "reason", "An emergency publish needs a reason."),
        ({"reason": "r" * 501}, "reason", "at most 500 characters"),
        ({"staged": "on"}, "staged", "A rollout plan goes with a direct publish"),
        ({"pooling_interval": "5"}, "pooling_interval", "between 30 and 86400"),
    ],
)
def test_a_bad_emergency_from_the_admin_is_a_form_error_and_stores_nothing(
    approvals, superuser, v1, fields, field, message
):
    answer = post_emergency(csrf_client(superuser.user), **fields)
    assert answer.status_code == 200
    assert message in " ".join(answer.context["form"].errors[field])
    assert EMERGENCY_BUTTON in answer.content.decode()
    assert versions() == [(1, URL, 30)]
    assert not ChangeRequest.objects.exists()
    assert not AuditEntry.objects.filter(action=AuditEntry.CONFIG_EMERGENCY).exists()


# Rollbacks and aborts while approvals are required --------------------------------------------


def bypassed(action: str) -> dict | None:
    return AuditEntry.objects.filter(action=action).latest("id").detail.get("approval_bypassed")


def test_an_operators_rollback_publishes_at_once_audited_as_bypassing_approval(
    approvals, v1, publish
):
    publish(URL + "/broken", 30)
    operator = client_for("op@example.com", OPERATOR)
    answer = operator.post("/config/admin/rollback", {"version": 1}, format="json")
    assert answer.status_code == 201, answer.content
    assert versions()[-1] == (3, URL, 30)
    assert not ChangeRequest.objects.exists()
    rule = bypassed(AuditEntry.CONFIG_ROLLED_BACK)
    assert rule["approvals_required"] == 1
    assert "restores content that was published before" in rule["rule"]


def test_a_rollback_without_approvals_required_says_nothing_of_a_bypass(v1, publish):
    publish(URL + "/broken", 30)
    operator = client_for("op@example.com", OPERATOR)
    assert operator.post("/config/admin/rollback", {"version": 1}, format="json").status_code == 201
    assert bypassed(AuditEntry.CONFIG_ROLLED_BACK) is None


def test_an_operators_abort_publishes_at_once_audited_as_bypassing_approval(approvals, v1):
    from apps.configs.actions import publish_config

    plan = {"canary_labels": {"ring": "canary"}, "waves": [50, 100], "bake_seconds": 600}
    publish_config(config_url=URL + "/new", pooling_interval=30, rollout=plan)
    operator = client_for("op@example.com", OPERATOR)
    answer = operator.post("/config/admin/rollout/abort", {"reason": "errors up"}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["state"] == "aborted"
    assert versions()[-1] == (3, URL, 30)
    assert "restores content" in bypassed(AuditEntry.CONFIG_ROLLED_BACK)["rule"]


def test_the_change_requests_list_shows_what_was_published_without_approval(
    approvals, client, superuser, v1, publish
):
    publish(URL + "/broken", 30)
    operator = client_for("op@example.com", OPERATOR)
    assert operator.post("/config/admin/rollback", {"version": 1}, format="json").status_code == 201
    emergency = {"config_url": URL + "/hotfix", "emergency": True, "reason": "outage"}
    assert superuser.put("/config/admin", emergency, format="json").status_code == 200
    client.force_login(superuser.user)
    html = client.get("/admin/changes/changerequest/").content.decode()
    section = html.split('id="published-without-approval"', 1)[1].split("</table>", 1)[0]
    assert "config v3" in section and "op@example.com" in section
    assert "restores content that was published before" in section
    assert "config v4" in section and "emergency publish" in section and "outage" in section
