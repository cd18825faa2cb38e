"""The health gate of rollouts: the new version's failure rate, from the hits the agents report,
halts a rollout and puts everyone back on the previous content (or pauses it), exactly once; and
a plan's pre-flight refuses a URL before anything is stored."""

import threading
from functools import partial

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from apps.agents.models import Agent, AgentHits
from apps.agents.services import (
    record_heartbeat,
    record_heartbeats,
)
from apps.audit.models import AuditEntry
from apps.configs.actions import publish_config
from apps.configs.models import ConfigVersion
from apps.ops import metrics
from apps.rollouts.models import Rollout
from tests.conftest import SentPreflights
from tests.support.commands import rollout_status
from tests.support.fleet import make_fleet, served
from tests.support.metrics import DEFAULT_SCOPE, sample

URL = "http://upstream.example/one"
NEW_URL = "http://upstream.example/two"
PLAN = {"canary_labels": {"ring": "canary"}, "waves": [50, 100], "bake_seconds": 600}

# Transactional throughout but for the 400s: a change's after-commit announcement (the state the
# agents are answered from) runs as it does in production, and threads see each other's writes.
transactional = pytest.mark.django_db(transaction=True)


def roll_out(**plan) -> Rollout:
    publish_config(config_url=URL, pooling_interval=30)
    publish_config(config_url=NEW_URL, pooling_interval=30, rollout={**PLAN, **plan})
    return Rollout.objects.get()


def report(agent: Agent, version: int, ok: int, failed: int) -> None:
    """One heartbeat of `agent` with these hits, written as the batched path writes it."""
    hits = [{"version": version, "ok": ok, "failed": failed}]
    record_heartbeats({agent.pk: (timezone.now(), version, [], hits, None)})


def stops(state: str) -> float:
    return metrics.instruments().rollouts_halted.labels(state)._value.get()


# The plan -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("auto_rollback", "yes"),
        ("auto_rollback", 1),
        ("auto_rollback", None),
        ("max_failure_rate", -0.1),
        ("max_failure_rate", 1.5),
        ("max_failure_rate", "0.2"),
        ("max_failure_rate", True),
        ("max_failure_rate", None),
        ("min_hits", 0),
        ("min_hits", -5),
        ("min_hits", "20"),
        ("min_hits", 20.5),
        ("min_hits", True),
        ("min_hits", 10**10),
        ("preflight", "true"),
        ("preflight", 1),
    ],
)
def test_a_bad_health_field_is_400_and_stores_nothing(admin_api, field, value):
    publish_config(config_url=URL, pooling_interval=30)
    audited = AuditEntry.objects.count()
    response = admin_api.post(
        "/config/admin",
        {"config_url": NEW_URL, "pooling_interval": 30, "rollout": {field: value}},
        "json",
    )
    assert response.status_code == 400, response.content
    assert field in response.json()["rollout"]
    assert ConfigVersion.objects.count() == 1
    assert not Rollout.objects.exists()
    assert AuditEntry.objects.count() == audited


@transactional
def test_the_health_fields_have_defaults(admin_api):
    make_fleet(canaries=1, others=3)
    publish_config(config_url=URL, pooling_interval=30)
    response = admin_api.post(
        "/config/admin", {"config_url": NEW_URL, "pooling_interval": 30, "rollout": {}}, "json"
    )
    assert response.status_code == 201
    rollout = Rollout.objects.get()
    assert (rollout.auto_rollback, rollout.max_failure_rate, rollout.min_hits) == (True, 0.2, 20)


@transactional
def test_the_health_fields_are_stored_and_shown(admin_api):
    make_fleet(canaries=1, others=3)
    publish_config(config_url=URL, pooling_interval=30)
    plan = {**PLAN, "auto_rollback": False, "max_failure_rate": 0.5, "min_hits": 100}
    response = admin_api.post(
        "/config/admin", {"config_url": NEW_URL, "pooling_interval": 30, "rollout": plan}, "json"
    )
    assert response.status_code == 201, response.content
    body = admin_api.get("/config/admin/rollout").json()
    assert (body["auto_rollback"], body["max_failure_rate"], body["min_hits"]) == (False, 0.5, 100)
    assert body["health"] == {
        "version": {"ok": 0, "failed": 0, "failure_rate": None},
        "previous_version": {"ok": 0, "failed": 0, "failure_rate": None},
    }
    started = AuditEntry.objects.get(action=AuditEntry.ROLLOUT_STARTED)
    assert started.detail["min_hits"] == 100 and started.detail["auto_rollback"] is False


# The decision -------------------------------------------------------------------------------


@transactional
def test_a_failing_canary_halts_the_rollout_and_everyone_gets_the_previous_content(admin_api):
    fleet = make_fleet(canaries=1, others=3)
    (canary, _), (other, _) = fleet[0], fleet[1]
    roll_out()
    halted_before = stops("halted")
    report(other, 1, 300, 0)

    # It should wait for min_hits: 19 failed hits of 19 decide nothing.
    report(canary, 2, 0, 19)
    assert Rollout.objects.get().state == "rolling"
    assert {served(token) for _, token in fleet[1:]} == {1}

    report(canary, 2, 1, 0)
    rollout = Rollout.objects.get()
    assert rollout.state == "halted"
    assert rollout.reason == (
        "1 of 1 agents with at least 20 hits of v2 fail more than 0.20 of them (the worst 0.95 "
        "over 20 hits)"
    )
    # It should put every agent back on the previous content at once: a new version.
    newest = ConfigVersion.objects.order_by("-version").first()
    assert (newest.version, newest.config_url, newest.rolled_back_from) == (3, URL, 1)
    assert {served(token) for _, token in fleet} == {3}
    entry = AuditEntry.objects.get(action=AuditEntry.ROLLOUT_HALTED)
    assert entry.actor == "system"
    assert entry.detail["reason"] == rollout.reason
    assert entry.detail["hits"] == {"ok": 1, "failed": 19, "failure_rate": 0.95}
    assert (entry.detail["agents_judged"], entry.detail["agents_failing"]) == (1, [str(canary.pk)])
    assert entry.detail["previous_hits"]["ok"] == 300
    assert AuditEntry.objects.filter(action=AuditEntry.CONFIG_ROLLED_BACK).count() == 1
    assert not AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_ABORTED).exists()
    assert stops("halted") == halted_before + 1
    text = APIClient().get("/metrics").content.decode()
    assert 'controller_rollouts_halted_total{state="halted"}' in text
    hits = partial(sample, text, "controller_rollout_hits", **DEFAULT_SCOPE)
    assert hits(outcome="failed", version="new") == 19
    assert hits(outcome="ok", version="previous") == 300

    # More failed hits of the halted version change nothing.
    report(canary, 2, 0, 50)
    assert ConfigVersion.objects.count() == 3
    assert AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_HALTED).count() == 1

    # A halted rollout is over: neither resumed nor aborted.
    assert admin_api.post("/config/admin/rollout/resume").status_code == 409
    assert admin_api.post("/config/admin/rollout/abort").status_code == 409
    body = admin_api.get("/config/admin/rollout").json()
    assert body["state"] == "halted" and body["reason"] == rollout.reason
    assert body["health"]["version"] == {"ok": 1, "failed": 69, "failure_rate": 69 / 70}

    code, out = rollout_status()
    assert code == 1
    assert f"the rollout was halted: {rollout.reason}" in out
    assert "health: v2 failure rate 0.99 over 70 hits, v1 0.00 over 300 hits" in out


@transactional
def test_a_rate_at_the_limit_goes_on_and_one_more_failure_halts():
    fleet = make_fleet(canaries=1, others=3)
    roll_out(max_failure_rate=0.25, min_hits=4)
    canary = fleet[0][0]
    report(canary, 2, 3, 1)
    assert Rollout.objects.get().state == "rolling"
    report(canary, 2, 0, 1)
    assert Rollout.objects.get().state == "halted"
    assert Rollout.objects.get().reason.startswith(
        "1 of 1 agents with at least 4 hits of v2 fail more than 0.25 of them (the worst 0.40 "
        "over 5 hits)"
    )


@transactional
def test_the_heartbeat_api_path_judges_too(agent_api, registered_agent):
    Agent.objects.filter(pk=registered_agent[0].pk).update(labels={"ring": "canary"})
    roll_out(min_hits=5)
    body = {"applied_version": 2, "workers": [], "hits": [{"version": 2, "ok": 0, "failed": 5}]}
    assert agent_api.post("/agent/heartbeat", body, format="json").status_code == 204
    assert Rollout.objects.get().state == "halted"


@transactional
def test_an_upstream_failing_as_much_before_does_not_halt(admin_api):
    fleet = make_fleet(canaries=1, others=3)
    canary = fleet[0][0]
    publish_config(config_url=URL, pooling_interval=30)
    # The canary's own hits with the previous version failed 90% already.
    report(canary, 1, 10, 90)
    publish_config(config_url=NEW_URL, pooling_interval=30, rollout=PLAN)

    report(canary, 2, 2, 18)
    rollout = Rollout.objects.get()
    assert rollout.state == "rolling"
    assert rollout.reason == (
        "1 of 1 agents with at least 20 hits of v2 fail more than 0.20 of them (the worst 0.90 "
        "over 20 hits), but not halted: each failed as often or more with the previous version"
    )
    assert not AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_HALTED).exists()

    # Worse than its previous version: halted.
    report(canary, 2, 0, 20)
    rollout = Rollout.objects.get()
    assert rollout.state == "halted"
    assert rollout.reason == (
        "1 of 1 agents with at least 20 hits of v2 fail more than 0.20 of them (the worst 0.95 "
        "over 40 hits)"
    )


@transactional
def test_other_agents_failing_before_do_not_excuse_the_canary():
    fleet = make_fleet(canaries=1, others=3)
    roll_out()
    # The previous version failed 90% over the other agents' hits: an agent is compared with
    # its own previous hits only, so no agent can excuse another.
    for agent, _ in fleet[1:]:
        report(agent, 1, 10, 90)
    report(fleet[0][0], 2, 2, 18)
    assert Rollout.objects.get().state == "halted"


@transactional
def test_a_previous_version_with_too_few_hits_does_not_excuse_the_new_one():
    fleet = make_fleet(canaries=1, others=3)
    roll_out()
    report(fleet[1][0], 1, 0, 5)  # 100% failed, but over 5 hits only
    report(fleet[0][0], 2, 0, 20)
    assert Rollout.objects.get().state == "halted"


@transactional
def test_an_operators_pause_does_not_save_a_failing_rollout(admin_api):
    fleet = make_fleet(canaries=1, others=3)
    roll_out()
    assert admin_api.post("/config/admin/rollout/pause").status_code == 200
    report(fleet[0][0], 2, 0, 20)
    assert Rollout.objects.get().state == "halted"


@transactional
def test_without_auto_rollback_the_rollout_is_paused_for_an_operator(admin_api):
    fleet = make_fleet(canaries=1, others=3)
    canary, canary_token = fleet[0]
    roll_out(auto_rollback=False)
    paused_before = stops("paused")

    report(canary, 2, 0, 20)
    rollout = Rollout.objects.get()
    assert rollout.state == "paused"
    assert rollout.reason.startswith("1 of 1 agents with at least 20 hits of v2 fail more than")
    # Nothing was rolled back: the canary keeps the new version, the others the old one.
    assert ConfigVersion.objects.count() == 2
    assert served(canary_token) == 2 and served(fleet[1][1]) == 1
    entry = AuditEntry.objects.get(action=AuditEntry.ROLLOUT_PAUSED)
    assert (entry.actor, entry.detail["automatic"]) == ("system", True)
    assert stops("paused") == paused_before + 1

    # Paused: more failures add no entry.
    report(canary, 2, 0, 20)
    assert AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_PAUSED).count() == 1

    # The operator resumes: the hits judged count from then on, so it goes on...
    assert admin_api.post("/config/admin/rollout/resume").status_code == 200
    report(canary, 2, 5, 5)
    assert Rollout.objects.get().state == "rolling"
    # ...until the hits since the resume fail too often.
    report(canary, 2, 0, 10)
    assert Rollout.objects.get().state == "paused"
    assert Rollout.objects.get().reason.endswith("(the worst 0.75 over 20 hits)")
    assert AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_PAUSED).count() == 2


@transactional
@pytest.mark.parametrize("auto_rollback", [True, False])
def test_concurrent_flushes_decide_exactly_once(auto_rollback):
    fleet = make_fleet(canaries=4, others=2)
    roll_out(auto_rollback=auto_rollback)
    barrier = threading.Barrier(4)
    errors = []

    def flush(agent: Agent) -> None:
        try:
            barrier.wait()
            # Each batch alone crosses the line.
            report(agent, 2, 0, 25)
        except Exception as exc:  # noqa: BLE001 - raised in the main thread below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=flush, args=(agent,)) for agent, _ in fleet[:4]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    if auto_rollback:
        assert Rollout.objects.get().state == "halted"
        assert AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_HALTED).count() == 1
        assert AuditEntry.objects.filter(action=AuditEntry.CONFIG_ROLLED_BACK).count() == 1
        assert ConfigVersion.objects.count() == 3
    else:
        assert Rollout.objects.get().state == "paused"
        assert AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_PAUSED).count() == 1
        assert ConfigVersion.objects.count() == 2


# Which hits count, and how much one agent weighs ---------------------------------------------


def rejected(reason: str) -> float:
    return metrics.instruments().heartbeat_hits_rejected.labels(reason)._value.get()


def stored(agent: Agent) -> dict:
    return {row.version: (row.ok, row.failed) for row in AgentHits.objects.filter(agent=agent)}


@transactional
def test_an_agent_the_rollout_has_not_reached_cannot_report_the_new_versions_hits(caplog):
    fleet = make_fleet(canaries=1, others=3)
    canary, other = fleet[0][0], fleet[1][0]
    roll_out()
    before = rejected("not_targeted")

    report(other, 2, 0, 10**9)

    # It should drop them: the rollout goes on, nothing of v2 is stored for that agent.
    assert Rollout.objects.get().state == "rolling"
    assert ConfigVersion.objects.count() == 2
    assert stored(other) == {}
    assert rejected("not_targeted") == before + 1
    assert f"agent {other.pk} reported hits of v2, which the rollout has not given it" in (
        caplog.text
    )
    # Its hits of the version it is on count, and so do the canary's of the new one.
    report(other, 1, 30, 0)
    report(canary, 2, 25, 0)
    assert stored(other) == {1: (30, 0)} and stored(canary) == {2: (25, 0)}


@transactional
def test_hits_of_versions_that_do_not_exist_yet_are_dropped():
    fleet = make_fleet(canaries=1, others=3)
    canary, liar = fleet[0][0], fleet[1][0]
    publish_config(config_url=URL, pooling_interval=30)
    before = rejected("future_version")
    # Sent in advance, for the next 100 versions: a billion good hits each.
    hits = [{"version": v, "ok": 10**9, "failed": 0} for v in range(2, 102)]
    record_heartbeats({liar.pk: (timezone.now(), 1, [], hits, None)})
    assert stored(liar) == {}
    assert rejected("future_version") == before + 100

    publish_config(config_url=NEW_URL, pooling_interval=30, rollout=PLAN)
    report(canary, 2, 0, 40)
    assert Rollout.objects.get().state == "halted"


@transactional
def test_hits_of_the_new_version_stored_before_its_rollout_started_do_not_count():
    fleet = make_fleet(canaries=1, others=3)
    canary = fleet[0][0]
    publish_config(config_url=URL, pooling_interval=30)
    # Left by a controller of an earlier release, which took hits of any version.
    AgentHits.objects.create(agent=canary, version=2, ok=10**9, updated_at=timezone.now())
    publish_config(config_url=NEW_URL, pooling_interval=30, rollout=PLAN)

    report(canary, 2, 0, 40)

    assert Rollout.objects.get().state == "halted"
    assert AuditEntry.objects.get(action=AuditEntry.ROLLOUT_HALTED).detail["hits"]["ok"] == 0


def ten_canaries() -> tuple[list[Agent], Agent]:
    """Ten canaries, the last of them lying, and the rollout of version 2 to them."""
    fleet = [agent for agent, _ in make_fleet(canaries=10, others=2)]
    roll_out()
    return fleet[:9], fleet[9]


@transactional
def test_one_lying_canary_cannot_halt_a_healthy_rollout():
    honest, liar = ten_canaries()
    # It should not decide alone, even first and with a billion failures.
    report(liar, 2, 0, 10**9)
    rollout = Rollout.objects.get()
    assert rollout.state == "rolling"
    assert rollout.reason.endswith(
        "but not halted: one agent alone does not decide while the rollout targets others"
    )
    for agent in honest:
        report(agent, 2, 40, 0)
    rollout = Rollout.objects.get()
    assert rollout.state == "rolling"
    assert rollout.reason == (
        "1 of 10 agents with at least 20 hits of v2 fail more than 0.20 of them (the worst 1.00 "
        "over 1000000000 hits), but not halted: 1 failing is not more than half of 10"
    )


@transactional
def test_one_lying_canary_cannot_keep_a_failing_rollout_going():
    honest, liar = ten_canaries()
    report(liar, 2, 10**9, 0)
    # Seven of the ten really fail, two are fine.
    for agent in honest[:2]:
        report(agent, 2, 40, 0)
    for agent in honest[2:]:
        report(agent, 2, 0, 40)
    rollout = Rollout.objects.get()
    assert rollout.state == "halted"
    entry = AuditEntry.objects.get(action=AuditEntry.ROLLOUT_HALTED)
    # Halted as soon as the failing agents outnumbered the others judged: 4 of 7.
    assert (entry.detail["agents_judged"], len(entry.detail["agents_failing"])) == (7, 4)
    assert rollout.reason.startswith("4 of 7 agents with at least 20 hits of v2 fail more than")


@transactional
def test_a_lying_agent_cannot_excuse_others_with_the_previous_versions_failures():
    honest, liar = ten_canaries()
    report(liar, 1, 0, 10**9)
    for agent in honest[:3]:
        report(agent, 2, 0, 40)
    assert Rollout.objects.get().state == "halted"


@transactional
def test_a_revoked_agents_hits_no_longer_count():
    from apps.agents.services import revoke_agent

    honest, liar = ten_canaries()
    report(liar, 2, 0, 40)
    assert revoke_agent(liar)
    # Two of two failing would halt it; the revoked agent's vote is gone with its token.
    report(honest[0], 2, 0, 40)
    assert Rollout.objects.get().state == "rolling"


@transactional
def test_hits_without_a_rollout_or_of_other_versions_decide_nothing():
    fleet = make_fleet(canaries=1, others=3)
    publish_config(config_url=URL, pooling_interval=30)
    report(fleet[0][0], 1, 0, 100)
    assert ConfigVersion.objects.count() == 1
    publish_config(config_url=NEW_URL, pooling_interval=30, rollout=PLAN)
    report(fleet[0][0], 7, 0, 100)
    record_heartbeat(fleet[0][0], applied_version=2, workers=[])
    assert Rollout.objects.get().state == "rolling"


@transactional
def test_the_admin_rollout_page_shows_the_halt_reason_in_red(client, admin_user):
    fleet = make_fleet(canaries=1, others=3)
    rollout = roll_out()
    report(fleet[0][0], 2, 0, 20)
    client.force_login(admin_user)

    page = client.get(f"/admin/rollouts/rollout/{rollout.pk}/change/")

    assert page.status_code == 200
    text = page.content.decode()
    assert 'class="halt-reason" id="halt-reason"' in text
    assert "#b71c1c" in text
    assert "1 of 1 agents with at least 20 hits of v2 fail more than 0.20" in text
    assert 'id="rollout-health"' in text and "no hits yet" in text
    assert 'id="control-resume"' not in text and 'id="control-abort"' not in text

    # The dashboard says so while version 3, the previous content, is current.
    dashboard = client.get("/admin/").content.decode()
    assert 'id="halt-banner"' in dashboard
    assert "The rollout of version 2 was halted" in dashboard
    assert "(the worst 1.00 over 20 hits)" in dashboard
    assert "Rollout halted by its failure rate" in dashboard
    publish_config(config_url=NEW_URL + "/fixed", pooling_interval=30)
    assert 'id="halt-banner"' not in client.get("/admin/").content.decode()


# A plan's pre-flight ------------------------------------------------------------------------


def answer_preflight(
    agent_api, sent: SentPreflights, status: int | None, error: str | None
) -> threading.Thread:
    """The agent's side: wait for the pre-flight request, then post this result."""

    def answer() -> None:
        try:
            body = {
                "id": sent.wait_for_id(),
                "worker_url": "http://127.0.0.1:8082",
                "status": status,
                "elapsed_ms": 3.5,
                "error": error,
            }
            assert agent_api.post("/agent/preflight", body, format="json").status_code == 204
        finally:
            connection.close()

    thread = threading.Thread(target=answer)
    thread.start()
    return thread


@transactional
def test_a_failed_preflight_refuses_the_publish_with_422_and_stores_nothing(
    admin_api, agent_api, registered_agent, sent_preflights
):
    publish_config(config_url=URL, pooling_interval=30)
    error = "upstream is unreachable: refused"
    answering = answer_preflight(agent_api, sent_preflights, None, error)

    response = admin_api.post(
        "/config/admin",
        {"config_url": NEW_URL, "pooling_interval": 30, "rollout": {"preflight": True}},
        "json",
    )
    answering.join(20)

    assert response.status_code == 422, response.content
    body = response.json()
    assert body["preflight"]["ok"] is False
    assert body["preflight"]["config_url"] == NEW_URL
    assert body["preflight"]["results"] == [
        {
            "agent_id": str(registered_agent[0].pk),
            "worker_url": "http://127.0.0.1:8082",
            "status": None,
            "elapsed_ms": 3.5,
            "error": "upstream is unreachable: refused",
        }
    ]
    assert ConfigVersion.objects.count() == 1
    assert not Rollout.objects.exists()
    refused = AuditEntry.objects.get(action=AuditEntry.PREFLIGHT_REFUSED)
    assert refused.detail["config_url"] == NEW_URL
    assert refused.detail["results"] == body["preflight"]["results"]
    assert not AuditEntry.objects.filter(
        action__in=[AuditEntry.CONFIG_UPDATED, AuditEntry.ROLLOUT_STARTED]
    ).exists()
    assert AuditEntry.objects.filter(action=AuditEntry.CONFIG_CREATED).count() == 1


@transactional
def test_a_good_preflight_lets_the_publish_through(admin_api, agent_api, sent_preflights):
    publish_config(config_url=URL, pooling_interval=30)
    answering = answer_preflight(agent_api, sent_preflights, 200, None)

    # A PUT that leaves the URL as it is pre-flights the current URL.
    response = admin_api.put(
        "/config/admin", {"pooling_interval": 60, "rollout": {"preflight": True}}, "json"
    )
    answering.join(20)

    assert response.status_code == 200, response.content
    assert response.json()["version"] == 2
    assert Rollout.objects.get().version == 2
    assert not AuditEntry.objects.filter(action=AuditEntry.PREFLIGHT_REFUSED).exists()


@transactional
def test_a_preflight_with_no_live_agent_is_409_and_stores_nothing(admin_api, registered_agent):
    publish_config(config_url=URL, pooling_interval=30)
    Agent.objects.update(last_seen=None)

    response = admin_api.post(
        "/config/admin",
        {"config_url": NEW_URL, "pooling_interval": 30, "rollout": {"preflight": True}},
        "json",
    )

    assert response.status_code == 409
    assert "No agent is live" in response.json()["detail"]
    assert ConfigVersion.objects.count() == 1
    assert AuditEntry.objects.get(action=AuditEntry.PREFLIGHT_REFUSED).detail["results"] == []


# The admin's change form --------------------------------------------------------------------

CHANGE_FORM = "/admin/configs/configversion/change-config/"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"max_failure_rate": "1.5"}, "max_failure_rate"),
        ({"max_failure_rate": "-0.1"}, "max_failure_rate"),
        ({"min_hits": "0"}, "min_hits"),
        ({"min_hits": "many"}, "min_hits"),
    ],
)
def test_the_change_form_applies_the_health_rules(client, admin_user, extra, field):
    publish_config(config_url=URL, pooling_interval=30)
    client.force_login(admin_user)
    values = {"config_url": NEW_URL, "pooling_interval": "30", "staged": "on", **extra}
    response = client.post(CHANGE_FORM, values)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert ConfigVersion.objects.count() == 1


@transactional
def test_the_change_form_stores_the_health_plan(client, admin_user):
    make_fleet(canaries=1, others=3)
    publish_config(config_url=URL, pooling_interval=30)
    client.force_login(admin_user)
    form = client.get(CHANGE_FORM).context["form"]
    assert (form["auto_rollback"].initial, form["max_failure_rate"].initial) == (True, 0.2)
    values = {"config_url": NEW_URL, "pooling_interval": "30", "staged": "on"}
    response = client.post(CHANGE_FORM, {**values, "max_failure_rate": "0.05", "min_hits": "50"})
    assert response.status_code == 302
    rollout = Rollout.objects.get()
    # An unticked box is off: this plan only pauses.
    assert (rollout.auto_rollback, rollout.max_failure_rate, rollout.min_hits) == (False, 0.05, 50)


@transactional
def test_the_change_forms_preflight_refuses_and_shows_the_results(
    client, admin_user, agent_api, registered_agent, sent_preflights
):
    publish_config(config_url=URL, pooling_interval=30)
    client.force_login(admin_user)
    answering = answer_preflight(agent_api, sent_preflights, 503, None)
    values = {"config_url": NEW_URL, "pooling_interval": "30", "staged": "on", "preflight": "on"}

    page = client.post(CHANGE_FORM, values)
    answering.join(20)

    assert page.status_code == 200
    text = page.content.decode()
    assert "did not pass" in text
    assert 'id="preflight-results"' in text and "<td>503</td>" in text
    assert ConfigVersion.objects.count() == 1
    assert AuditEntry.objects.filter(action=AuditEntry.PREFLIGHT_REFUSED).count() == 1
