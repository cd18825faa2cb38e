"""The operator's tour of the admin in a real Chromium, against a live server."""

import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.agents.models import Agent
from apps.agents.services import issue_registration_token, register_agent
from apps.configs.actions import publish_config
from apps.configs.models import ConfigVersion
from tests.conftest import unavailable
from tests.support.scopes import set_approvals

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SEED_EMAIL = "admin@distributed-system.com"
SEED_PASSWORD = "Admin123!@#"
URL = "http://upstream.example/task"

pytestmark = [pytest.mark.django_db(transaction=True)]


def chromium_path() -> str | None:
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
    )


@pytest.fixture
def page(live_server, monkeypatch):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -r requirements-dev.txt)")
    executable = chromium_path()
    if executable is None:
        unavailable("Chromium is not installed (apt-get install chromium)")
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # plain blocking calls between browser steps, which is what this switch allows.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            tab = context.new_page()
            tab.set_default_timeout(20_000)
            yield tab
        finally:
            browser.close()


def make_agent(name: str, **fields) -> Agent:
    token, _ = issue_registration_token()
    agent, _ = register_agent(token=token, name=name, hostname=f"{name}.example")
    Agent.objects.filter(pk=agent.pk).update(**fields)
    return Agent.objects.get(pk=agent.pk)


def run_action(page, live_server, changelist: str, pk, action: str, confirm: str) -> None:
    page.goto(f"{live_server.url}{changelist}")
    page.check(f'input[name="_selected_action"][value="{pk}"]')
    page.select_option('select[name="action"]', action)
    page.click('button[name="index"]')
    page.click(f'input[type="submit"][value="{confirm}"]')
    page.wait_for_selector("ul.messagelist")


def test_operator_tour_of_the_admin(page, live_server):
    call_command("seed_admin", allow_default_password=True)

    # Log in as the seeded admin; the admin's stylesheet is served.
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", SEED_EMAIL)
    page.fill("#id_password", SEED_PASSWORD)
    page.click('input[type="submit"]')
    page.wait_for_selector("#dashboard")
    assert page.evaluate("getComputedStyle(document.getElementById('header')).display") == "flex"
    css = page.request.get(f"{live_server.url}/static/admin/css/base.css")
    assert css.status == 200
    assert page.inner_text("#current-version-none") == "No configuration yet."

    # Change the configuration through the admin form and watch the version rise.
    for interval in ("30", "60"):
        page.click("text=Change configuration")
        page.fill("#id_config_url", URL)
        page.fill("#id_pooling_interval", interval)
        page.click('input[value="Save as a new version"]')
        page.wait_for_selector("ul.messagelist")
    assert "Version 2 of default/production is now current." in page.inner_text("ul.messagelist")
    page.goto(f"{live_server.url}/admin/")
    assert page.inner_text("#current-version") == "2"
    assert page.inner_text("#current-interval") == "60 s"

    # A bad value is refused with the API's message, and nothing is stored.
    page.goto(f"{live_server.url}/admin/configs/configversion/change-config/")
    page.fill("#id_pooling_interval", "5")
    page.click('input[value="Save as a new version"]')
    assert "between 30 and 86400" in page.inner_text(".field-pooling_interval")
    assert ConfigVersion.objects.count() == 2

    # Roll back to version 1 through the action and its confirmation page.
    first = ConfigVersion.objects.get(version=1)
    run_action(
        page,
        live_server,
        "/admin/configs/configversion/",
        first.pk,
        "rollback_to_version",
        "Yes, roll back",
    )
    assert "Rolled back: version 3" in page.inner_text("ul.messagelist")
    assert ConfigVersion.objects.order_by("-version").first().pooling_interval == 30

    # Issue a registration token: it is shown once, with its expiry, and it works.
    page.goto(f"{live_server.url}/admin/agents/registrationtoken/")
    page.click("text=Issue token")
    page.click('input[value="Issue token"]')
    token = page.input_value("#registration-token")
    assert token.startswith("reg_")
    assert page.inner_text("#token-expires")
    agent, _ = register_agent(token=token, name="edge-browser", hostname="edge.example")

    # Revoke that agent through the action.
    run_action(page, live_server, "/admin/agents/agent/", agent.pk, "revoke_agents", "Yes, revoke")
    assert "Revoked 1 agent." in page.inner_text("ul.messagelist")
    assert Agent.objects.get(pk=agent.pk).revoked_at is not None
    assert "revoked" in page.inner_text("tr:has-text('edge-browser')")

    # A fleet in every state, for the dashboard.
    now = timezone.now()
    make_agent("edge-1", applied_version=3, last_seen=now)
    make_agent("edge-2", applied_version=3, last_seen=now)
    make_agent("edge-3", applied_version=2, last_seen=now)
    make_agent("edge-4", applied_version=1, last_seen=now - timedelta(minutes=10))
    page.goto(f"{live_server.url}/admin/")
    assert page.inner_text("#fleet-in_sync .number") == "2"
    assert page.inner_text("#fleet-behind .number") == "1"
    assert page.inner_text("#fleet-stale .number") == "1"
    assert page.inner_text("#fleet-revoked .number") == "1"
    assert "Config rolled back" in page.inner_text("#recent-changes")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-dashboard.png"), full_page=True)

    # Read the audit log, and search it.
    page.goto(f"{live_server.url}/admin/audit/auditentry/")
    log = page.inner_text("#result_list")
    for action in ("Login succeeded", "Config created", "Config rolled back", "Agent revoked"):
        assert action in log
    assert "Registration token issued" in log
    page.fill("#searchbar", "agent:")
    page.click('input[type="submit"][value="Search"]')
    assert "Agent registered" in page.inner_text("#result_list")
    assert token not in page.content()


def test_rollout_page_in_the_admin(page, live_server):
    from apps.agents.services import record_heartbeat
    from apps.audit.models import AuditEntry
    from apps.configs.actions import publish_config
    from apps.rollouts.models import Rollout
    from apps.rollouts.services import advance_rollouts
    from apps.rollouts.status import measure

    call_command("seed_admin", allow_default_password=True)
    fleet = []
    for index in range(8):
        token, _ = issue_registration_token(allow_agent_labels=True)
        labels = {"ring": "canary"} if index < 2 else {"ring": "main"}
        fleet.append(register_agent(token=token, name=f"edge-{index}", labels=labels)[0])
    publish_config(config_url=URL, pooling_interval=30)
    for agent in fleet:
        record_heartbeat(agent, applied_version=1, workers=[])

    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", SEED_EMAIL)
    page.fill("#id_password", SEED_PASSWORD)
    page.click('input[type="submit"]')
    page.wait_for_selector("#dashboard")
    assert page.query_selector("#rollout-banner") is None

    # A bad plan is refused on the form, naming the field, and nothing is stored.
    page.click("text=Change configuration")
    page.fill("#id_config_url", URL + "/v2")
    page.check("#id_staged")
    page.fill("#id_canary_labels", "ring=canary")
    page.fill("#id_waves", "50,40")
    page.click('input[value="Save as a new version"]')
    assert "rise" in page.inner_text(".field-waves")
    assert ConfigVersion.objects.count() == 1

    # The plan from the change form starts a rollout: canaries first.
    page.fill("#id_waves", "50,100")
    page.fill("#id_bake_seconds", "0")
    page.click('input[value="Save as a new version"]')
    page.wait_for_selector("ul.messagelist")
    rollout = Rollout.objects.get()
    assert (rollout.version, rollout.wave, rollout.waves) == (2, 0, [50, 100])

    # The canaries apply it, wave 1 starts, and all but one of its agents apply it too: the
    # chart has something to show.
    for agent in fleet[:2]:
        record_heartbeat(agent, applied_version=2, workers=[])
    advance_rollouts()
    assert Rollout.objects.get().wave == 1
    wave_one = [a for a in measure(Rollout.objects.get()).agents if a["targeted"]][2:]
    assert len(wave_one) == 3  # 50% of the 6 others
    for info in wave_one[1:]:
        record_heartbeat(Agent.objects.get(pk=info["id"]), applied_version=2, workers=[])
    advance_rollouts()
    assert Rollout.objects.get().wave == 1

    # The dashboard shows it at the top, with a way in.
    page.goto(f"{live_server.url}/admin/")
    banner = page.inner_text("#rollout-banner")
    assert "Rollout of version 2 is rolling" in banner
    assert "wave 1 of 2" in banner
    page.click("#rollout-banner a")
    page.wait_for_selector("#rollout")
    assert page.inner_text("#rollout-state") == "rolling"
    assert page.inner_text("#rollout-wave") == "1"
    assert page.query_selector("#rollout-chart polyline#applied-line") is not None
    assert len(page.query_selector_all("#rollout-chart .wave-mark")) == 2
    assert page.inner_text("#bar-applied .count") == "4"
    assert page.inner_text("#bar-applying .count") == "1"
    assert wave_one[0]["name"] in page.inner_text("#stragglers")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-rollout.png"), full_page=True)

    # Pause, with a reason, through the confirmation page (a POST with the CSRF token).
    page.click("#control-pause")
    assert "No new wave starts" in page.inner_text("#control-explanation")
    page.fill("#id_reason", "checking the error rate")
    page.click("#confirm-control")
    page.wait_for_selector("ul.messagelist")
    assert page.inner_text("#rollout-state") == "paused"
    assert page.query_selector("#control-pause") is None
    entry = AuditEntry.objects.get(action=AuditEntry.ROLLOUT_PAUSED)
    assert (entry.actor, entry.detail["reason"]) == (SEED_EMAIL, "checking the error rate")

    # Backing out of a confirmation changes nothing.
    page.click("#control-abort")
    page.click("text=No, take me back")
    page.wait_for_selector("#rollout")
    assert Rollout.objects.get().state == "paused"

    # Abort: everyone back on version 1's content, as version 3.
    page.click("#control-abort")
    page.click("#confirm-control")
    page.wait_for_selector("ul.messagelist")
    assert page.inner_text("#rollout-state") == "aborted"
    newest = ConfigVersion.objects.order_by("-version").first()
    assert (newest.version, newest.config_url, newest.rolled_back_from) == (3, URL, 1)
    page.goto(f"{live_server.url}/admin/")
    assert page.query_selector("#rollout-banner") is None


def log_in(page, live_server, email: str, password: str) -> None:
    page.context.clear_cookies()
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", email)
    page.fill("#id_password", password)
    page.click('input[type="submit"]')
    page.wait_for_selector("#dashboard")


def test_an_editor_proposes_and_another_user_approves_in_the_admin(page, live_server, settings):
    set_approvals(1)
    publish_config(config_url=URL, pooling_interval=30)
    for email, role in (("ed@example.com", "editor"), ("ap@example.com", "approver")):
        call_command("grant_role", email, role, "--create", "--password", "Long-Pass-7!")

    # The editor proposes: a change request, and version 1 stays current.
    log_in(page, live_server, "ed@example.com", "Long-Pass-7!")
    page.click("text=Change configuration")
    page.fill("#id_pooling_interval", "60")
    # No way past review is offered to an editor.
    assert page.locator('input[name="_emergency"]').count() == 0
    page.click('input[value="Propose for approval"]')
    page.wait_for_selector("ul.messagelist")
    assert "awaits approval" in page.inner_text("ul.messagelist")
    assert "60" in page.inner_text("#change-diff .diff-pooling_interval .diff-proposed")
    assert page.locator("#approve-form").count() == 0  # not for its own author
    page.goto(f"{live_server.url}/admin/")
    assert page.inner_text("#current-version") == "1"
    assert page.inner_text("#pending-changes .number") == "1"

    # An approver opens it from the dashboard and approves it.
    log_in(page, live_server, "ap@example.com", "Long-Pass-7!")
    page.click("#pending-changes")
    page.click("#result_list tbody tr th a")
    page.fill("#approve-comment", "fine by me")
    page.click('#approve-form input[value="Approve"]')
    page.wait_for_selector("ul.messagelist")
    assert "is published as version 2" in page.inner_text("ul.messagelist")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-change-request.png"), full_page=True)

    # The dashboard shows the new version and nothing pending.
    page.goto(f"{live_server.url}/admin/")
    assert page.inner_text("#current-version") == "2"
    assert page.inner_text("#current-interval") == "60 s"
    assert page.inner_text("#pending-changes .number") == "0"
    assert ConfigVersion.objects.get(version=2).created_by.email == "ed@example.com"

    # A superuser publishes in an emergency from the same form: a reason is required, then the
    # version is current at once, and the dashboard shows it in red with the reason.
    call_command("seed_admin", allow_default_password=True)
    log_in(page, live_server, SEED_EMAIL, SEED_PASSWORD)
    page.click("text=Change configuration")
    page.fill("#id_pooling_interval", "120")
    emergency = 'input[value="Publish now (emergency, bypasses review)"]'
    page.click(emergency)
    assert "needs a reason" in page.inner_text("#emergency-publish .field-reason")
    assert ConfigVersion.objects.count() == 2
    page.fill("#id_reason", "upstream overloaded")
    page.click(emergency)
    page.wait_for_selector("ul.messagelist")
    assert "Emergency publish: version 3 is now current" in page.inner_text("ul.messagelist")
    page.goto(f"{live_server.url}/admin/")
    assert page.inner_text("#current-version") == "3"
    assert "upstream overloaded" in page.inner_text("#current-emergency")


def test_the_dashboard_shows_every_application_in_every_environment(page, live_server):
    from apps.scopes.services import (
        create_application,
        create_environment,
        default_scope,
        get_scope,
    )

    default_scope()  # the migration made it; a transactional test before may have flushed it
    call_command("seed_admin", allow_default_password=True)
    create_environment("staging", order=-10)
    create_application("payments", description="Card payments")
    create_application("search")
    publish_config(config_url=URL, pooling_interval=30)
    now = timezone.now()
    make_agent("edge-1", applied_version=1, last_seen=now)
    make_agent("edge-2", applied_version=1, last_seen=now)
    publish_config(config_url=URL + "/2", pooling_interval=30, rollout={"waves": [50, 100]})
    # payments in production, on its own version 1, and search in staging on its version 2.
    payments = get_scope("payments", "production")
    publish_config(scope_id=payments.pk, config_url=URL + "/pay", pooling_interval=30)
    make_agent("pay-1", applied_version=1, last_seen=now, scope=payments)
    search = get_scope("search", "staging")
    for version in (1, 2):
        publish_config(scope_id=search.pk, config_url=f"{URL}/find{version}", pooling_interval=30)
    make_agent("find-1", applied_version=2, last_seen=now, scope=search)
    make_agent("find-2", applied_version=1, last_seen=now, scope=search)

    log_in(page, live_server, SEED_EMAIL, SEED_PASSWORD)

    headers = page.locator("#scope-matrix thead th").all_text_contents()
    assert headers == ["Application", "staging", "production"]
    rows = page.locator("#scope-matrix tbody th").all_text_contents()
    assert rows == ["default", "payments", "search"]
    cell = page.inner_text("#scope-default-production")
    assert "v2" in cell and "rolling" in cell
    # Two live agents, whichever wave each is in.
    assert "/ 2 in sync" in cell
    assert page.inner_text("#scope-payments-staging").strip() == "—"
    assert page.inner_text("#scope-default-staging").strip() == "—"
    payments_cell = page.inner_text("#scope-payments-production")
    assert "v1" in payments_cell and "1 / 1 in sync" in payments_cell
    search_cell = page.inner_text("#scope-search-staging")
    assert "v2" in search_cell and "1 / 2 in sync" in search_cell
    assert page.inner_text("#scope-search-production").strip() == "—"
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#scope-matrix").screenshot(path=str(ARTIFACTS / "admin-matrix.png"))

    # A cell leads to its scope's page and to its agents, and to nothing of another scope.
    page.click("#scope-search-staging a.version")
    page.wait_for_selector("#scope-history")
    assert page.inner_text("#scope-config-url") == f"{URL}/find2"
    history = page.locator("#scope-history tbody tr").all_inner_texts()
    assert len(history) == 2
    assert f"{URL}/find1" in history[0] and f"{URL}/find2" in history[0]
    assert f"{URL}/pay" not in page.content()
    page.go_back()
    page.click("#scope-search-staging a.agents")
    page.wait_for_selector("#result_list")
    names = page.locator("#result_list th.field-__str__").all_text_contents()
    assert sorted(name.split(" ")[0] for name in names) == ["find-1", "find-2"]
    page.go_back()

    # An application's page lists each environment's scope.
    page.click("#scope-matrix >> text=payments")
    page.wait_for_selector("#application-scopes tbody tr:nth-child(2)")
    scopes = page.locator("#application-scopes tbody tr").all_inner_texts()
    assert [row.split("\t")[0] for row in scopes] == ["staging", "production"]
    assert "none yet" in scopes[0]
