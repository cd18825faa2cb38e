"""Staged rollouts through the API: plans, per-agent targets, waves, the operator's controls."""

import re
import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F
from django.utils import timezone

from apps.agents.models import Agent
from apps.agents.services import (
    record_heartbeat,
    revoke_agent,
)
from apps.audit.models import AuditEntry
from apps.configs.models import ConfigVersion
from apps.rollouts import services
from apps.rollouts.models import Rollout
from apps.rollouts.targets import agent_key, target_of, target_version_expression
from controller_site.tokens import AGENT_PREFIX, hash_token, new_token
from tests.support.clients import api_as, bearer
from tests.support.commands import rollout_status
from tests.support.fleet import make_fleet, served
from tests.support.metrics import DEFAULT_SCOPE, sample
from tests.support.scopes import set_approvals

URL = "http://upstream.example/one"
NEW_URL = "http://upstream.example/two"
# Transactional tests throughout: a change's after-commit announcement (the cached state the
# agents are answered from) runs as it does in production.
PLAN = {"canary_labels": {"ring": "canary"}, "waves": [50, 100], "bake_seconds": 60}


def ids_in_order(count: int, version: int) -> list[uuid.UUID]:
    """`count` fixed agent ids, sorted by their place in the order of `version`'s waves."""
    ids = [uuid.UUID(int=n) for n in range(1, count + 1)]
    return sorted(ids, key=lambda agent_id: agent_key(agent_id, version))


def make_fleet_with_ids(ids: list[uuid.UUID], first: int = 0) -> list[tuple[Agent, str]]:
    """Agents with the given ids (registration picks a random one), so that their place in a
    rollout's order, and so the test, is the same on every run."""
    fleet = []
    for index, agent_id in enumerate(ids, start=first):
        token = new_token(AGENT_PREFIX)
        agent = Agent.objects.create(
            id=agent_id,
            name=f"agent-{index}",
            labels={"ring": "main"},
            token_hash=hash_token(token),
            last_seen=timezone.now(),
        )
        fleet.append((agent, token))
    return fleet


def apply(agents, version: int) -> None:
    """The agents report that they applied `version`, as their heartbeat would."""
    for agent, _ in agents:
        record_heartbeat(agent, applied_version=version, workers=[])


def targeted(fleet, version: int) -> list:
    return [(agent, token) for agent, token in fleet if served(token) == version]


def start(admin_api, publish, plan=PLAN, **body):
    publish(URL, 30)
    with_plan = {"config_url": NEW_URL, "pooling_interval": 30, "rollout": plan, **body}
    response = admin_api.post("/config/admin", with_plan, "json")
    assert response.status_code == 201, response.content
    return response


def bake(seconds: float) -> None:
    """Let `seconds` of the current wave's bake time pass."""
    Rollout.objects.update(wave_started_at=F("wave_started_at") - timedelta(seconds=seconds))


def wave_entries() -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_WAVE_STARTED).order_by("at"))


@pytest.mark.django_db(transaction=True)
class TestPlans:
    @pytest.mark.parametrize(
        "plan",
        [
            {"waves": [50, 100], "colour": "blue"},
            {"waves": [50, 50, 100]},
            {"waves": [60, 40, 100]},
            {"waves": [50, 101]},
            {"waves": [0, 100]},
            {"waves": [50]},
            {"waves": []},
            {"waves": list(range(5, 100, 9)) + [100]},
            {"bake_seconds": -1},
            {"bake_seconds": "soon"},
            {"canary_labels": {"ring": "can ary"}},
            {"waves": "all"},
            {"wave_timeout_seconds": 0},
            {"wave_timeout_seconds": "600"},
            {"wave_timeout_seconds": 60.5},
            {"wave_timeout_seconds": True},
            "fast",
        ],
    )
    def test_a_bad_plan_is_400_and_stores_nothing(self, admin_api, publish, plan):
        publish(URL, 30)
        audited = AuditEntry.objects.count()
        response = admin_api.post(
            "/config/admin",
            {"config_url": NEW_URL, "pooling_interval": 30, "rollout": plan},
            "json",
        )
        assert response.status_code == 400, response.content
        assert "rollout" in response.json()
        assert ConfigVersion.objects.count() == 1
        assert not Rollout.objects.exists()
        assert AuditEntry.objects.count() == audited

    def test_every_field_has_a_default(self, admin_api, publish):
        start(admin_api, publish, plan={})
        rollout = Rollout.objects.get()
        assert (rollout.waves, rollout.canary_labels, rollout.bake_seconds) == ([100], {}, 0)
        assert rollout.wave == 1
        assert rollout.wave_timeout_seconds is None

    def test_a_rollout_of_the_first_version_is_400(self, admin_api):
        response = admin_api.post(
            "/config/admin",
            {"config_url": URL, "pooling_interval": 30, "rollout": PLAN},
            "json",
        )
        assert response.status_code == 400
        assert not ConfigVersion.objects.exists()

    def test_without_a_plan_everyone_gets_the_change_at_once(self, admin_api, publish):
        fleet = make_fleet()
        publish(URL, 30)
        publish(NEW_URL, 30)
        assert {served(token) for _, token in fleet} == {2}
        assert not Rollout.objects.exists()
        assert admin_api.get("/config/admin/rollout").status_code == 404

    def test_put_takes_a_plan_too(self, admin_api, publish):
        make_fleet()
        publish(URL, 30)
        response = admin_api.put("/config/admin", {"pooling_interval": 60, "rollout": PLAN}, "json")
        assert response.status_code == 200
        assert Rollout.objects.get().version == 2


@pytest.mark.django_db(transaction=True)
class TestTargets:
    def test_canaries_first_then_cumulative_waves_then_everyone(self, admin_api, publish):
        fleet = make_fleet(canaries=2, others=4)
        canaries, others = fleet[:2], fleet[2:]
        start(admin_api, publish)

        # It should give the new version to the canaries only, and the previous to the others,
        # with the content and interval of their own version.
        assert [served(token) for _, token in canaries] == [2, 2]
        assert [served(token) for _, token in others] == [1, 1, 1, 1]
        response = bearer(others[0][1]).get("/config/agent")
        assert response["ETag"] == '"1"'
        assert response.json()["config_url"] == URL
        assert bearer(canaries[0][1]).get("/config/agent").json()["config_url"] == NEW_URL
        body = admin_api.get("/config/admin/rollout").json()
        assert body["state"] == "rolling"
        assert body["wave"] == 0
        assert (body["agents_total"], body["agents_targeted"], body["agents_applied"]) == (6, 2, 0)
        assert (body["version"], body["previous_version"]) == (2, 1)

        # It should not start wave 1 before the canaries applied it, nor before the bake time.
        bake(61)
        services.advance_rollouts()
        assert Rollout.objects.get().wave == 0
        bake(-61)
        apply(canaries, 2)
        services.advance_rollouts()
        assert Rollout.objects.get().wave == 0
        bake(61)
        services.advance_rollouts()
        assert Rollout.objects.get().wave == 1

        # 50% of the 4 others is exactly 2, those first in the hash order of (id, version).
        first_half = targeted(others, 2)
        assert len(first_half) == 2
        order = sorted(others, key=lambda pair: agent_key(pair[0].pk, 2))
        assert {a.pk for a, _ in first_half} == {a.pk for a, _ in order[:2]}
        assert admin_api.get("/config/admin/rollout").json()["agents_targeted"] == 4

        apply(first_half, 2)
        bake(61)
        services.advance_rollouts()
        assert Rollout.objects.get().wave == 2
        assert {served(token) for _, token in fleet} == {2}

        apply(others, 2)
        services.advance_rollouts()
        assert Rollout.objects.get().state == "rolling"
        bake(61)
        services.advance_rollouts()
        body = admin_api.get("/config/admin/rollout").json()
        assert body["state"] == "completed"
        assert body["agents_applied"] == 6
        assert [e.detail["wave"] for e in wave_entries()] == [0, 1, 2]
        assert AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_COMPLETED).count() == 1

    def test_agents_list_shows_each_agents_target(self, admin_api, publish):
        fleet = make_fleet(canaries=1, others=2)
        start(admin_api, publish)
        items = {item["id"]: item for item in admin_api.get("/agents").json()["results"]}
        assert items[str(fleet[0][0].pk)]["target_version"] == 2
        assert items[str(fleet[1][0].pk)]["target_version"] == 1
        # An agent on its target is in sync, whichever version that is.
        apply(fleet[1:], 1)
        assert admin_api.get("/agents").json()["results"][1]["status"] == "in_sync"
        in_sync = admin_api.get("/agents?status=in_sync").json()["results"]
        assert {item["id"] for item in in_sync} == {str(a.pk) for a, _ in fleet[1:]}

    def test_status_filter_and_counts_take_each_agents_own_target(
        self, admin_api, publish, client, admin_user
    ):
        fleet = make_fleet(canaries=2, others=4)
        canaries, others = fleet[:2], fleet[2:]
        start(admin_api, publish, plan={**PLAN, "bake_seconds": 600})
        apply(fleet, 1)
        apply(canaries[:1], 2)

        def listed(status: str) -> set[str]:
            answer = admin_api.get(f"/agents?status={status}&page_size=100")
            assert answer.status_code == 200
            return {item["name"] for item in answer.json()["results"]}

        def counted() -> dict:
            client.force_login(admin_user)
            fleet_counts = client.get("/admin/").context["fleet"]
            return {status: count for status, _, count in fleet_counts}

        # It should count a canary still on v1 as behind (its target is v2), and the others on
        # v1 as in sync: their wave has not started.
        assert listed("behind") == {"agent-1"}
        assert listed("in_sync") == {"agent-0", "agent-2", "agent-3", "agent-4", "agent-5"}
        assert counted() == {"in_sync": 5, "behind": 1, "stale": 0, "revoked": 0}
        # The admin's filter is the same rule.
        page = client.get("/admin/agents/agent/?status=behind")
        assert [agent.name for agent in page.context["cl"].result_list] == ["agent-1"]

        # Wave 1: half the others (by the hash order) now have v2 as target.
        assert admin_api.post("/config/admin/rollout/promote").status_code == 200
        first_half = {agent.name for agent, _ in targeted(others, 2)}
        assert len(first_half) == 2
        assert listed("behind") == {"agent-1", *first_half}
        assert counted()["behind"] == 3
        # Every filter agrees with each agent's own status in the list.
        items = admin_api.get("/agents?page_size=100").json()["results"]
        for status in ("in_sync", "behind", "stale"):
            assert listed(status) == {i["name"] for i in items if i["status"] == status}

    def test_the_database_answers_each_agent_the_target_the_watch_gives_it(
        self, admin_api, publish
    ):
        fleet = make_fleet(canaries=3, others=25)
        # Agents without the canary label's key at all, and one with another value.
        Agent.objects.filter(pk__in=[a.pk for a, _ in fleet[3:8]]).update(labels={})
        Agent.objects.filter(pk=fleet[8][0].pk).update(labels={"ring": "canaryx"})
        agents = list(Agent.objects.values("id", "labels"))
        order = sorted(agent_key(a["id"], 7) for a in agents)
        split = 0
        for canary_labels in ({"ring": "canary"}, {}, {"ring": "canary", "zone": "a"}):
            for cutoff in ("", order[0], order[9], order[-2], order[-1], "8" + "0" * 63):
                state = {
                    "version": 7,
                    "rollout": {
                        "previous": {"version": 6},
                        "canary_labels": canary_labels,
                        "cutoff": cutoff,
                    },
                }
                expected = {
                    str(a["id"]): target_of(state, a["id"], a["labels"])["version"] for a in agents
                }
                computed = {
                    str(pk): version
                    for pk, version in Agent.objects.annotate(
                        target=target_version_expression(state)
                    ).values_list("pk", "target")
                }
                assert computed == expected, (canary_labels, cutoff)
                split += set(expected.values()) == {6, 7}
        # Most cases split the fleet between the two versions, so both answers are compared.
        assert split >= 12

    def test_admin_agents_list_shows_the_hits_of_each_agents_target(
        self, admin_api, publish, client, admin_user
    ):
        fleet = make_fleet(canaries=1, others=1)
        start(admin_api, publish, plan={**PLAN, "bake_seconds": 600})
        canary, other = fleet[0][0], fleet[1][0]
        both = [{"version": 1, "ok": 40, "failed": 0}, {"version": 2, "ok": 3, "failed": 1}]
        record_heartbeat(canary, applied_version=2, workers=[], hits=both)
        both = [{"version": 1, "ok": 17, "failed": 3}, {"version": 2, "ok": 5, "failed": 5}]
        record_heartbeat(other, applied_version=1, workers=[], hits=both)
        client.force_login(admin_user)

        page = client.get("/admin/agents/agent/")
        shown = {
            agent.name: page.context["cl"].model_admin.target_hits(agent)
            for agent in page.context["cl"].result_list
        }
        # It should show the other agent's hits of v1, its target still, and the canary's of v2.
        assert "17 ok" in shown["agent-1"] and "3 failed" in shown["agent-1"]
        assert shown["agent-1"].startswith("v1: ")
        assert "3 ok" in shown["agent-0"] and "1 failed" in shown["agent-0"]
        assert shown["agent-0"].startswith("v2: ")
        # The API says the same.
        items = {i["name"]: i["hits"] for i in admin_api.get("/agents").json()["results"]}
        assert items["agent-0"] == {"version": 2, "ok": 3, "failed": 1}
        assert items["agent-1"] == {"version": 1, "ok": 17, "failed": 3}

    def test_a_wave_that_falls_between_agents_takes_the_next_one(self, admin_api, publish):
        fleet = make_fleet(canaries=0, others=5)
        start(admin_api, publish, plan={"waves": [25, 100], "bake_seconds": 600})
        # ceil(25% of 5 = 1.25) is 2: a share is rounded up, never down.
        assert len(targeted(fleet, 2)) == 2
        assert admin_api.get("/config/admin/rollout").json()["agents_targeted"] == 2

    def test_a_stale_agent_holds_nothing_back(self, admin_api, publish):
        fleet = make_fleet(canaries=2, others=2)
        start(admin_api, publish, plan={**PLAN, "bake_seconds": 0})
        apply(fleet[:1], 2)
        Agent.objects.filter(pk=fleet[1][0].pk).update(
            last_seen=timezone.now() - timedelta(hours=1)
        )
        services.advance_rollouts()
        assert Rollout.objects.get().wave == 1

    def test_a_stalled_wave_waits_forever_without_a_timeout(self, admin_api, publish):
        fleet = make_fleet(canaries=2, others=2)
        start(admin_api, publish, plan={**PLAN, "bake_seconds": 0})
        apply(fleet[:1], 2)
        apply(fleet[1:], 1)
        bake(30 * 24 * 3600)
        services.advance_rollouts()
        assert (Rollout.objects.get().state, Rollout.objects.get().wave) == ("rolling", 0)

    def test_a_wave_past_its_timeout_pauses_naming_the_agents_that_did_not_apply(
        self, admin_api, publish, client, admin_user
    ):
        fleet = make_fleet(canaries=3, others=2)
        plan = {**PLAN, "bake_seconds": 0, "wave_timeout_seconds": 600}
        start(admin_api, publish, plan=plan)
        apply(fleet[:1], 2)
        # Two canaries keep reporting the old version.
        apply(fleet[1:], 1)
        bake(590)
        services.advance_rollouts()
        assert Rollout.objects.get().state == "rolling"

        bake(11)
        services.advance_rollouts()

        rollout = Rollout.objects.get()
        assert (rollout.state, rollout.wave) == ("paused", 0)
        assert rollout.reason == (
            "wave 0 was not applied within 600 s: 2 of 3 agents still report an older version: "
            "agent-1 (v1), agent-2 (v1)"
        )
        entry = AuditEntry.objects.get(action=AuditEntry.ROLLOUT_PAUSED)
        assert (entry.actor, entry.detail["automatic"]) == ("system", True)
        assert entry.detail["reason"] == rollout.reason
        assert entry.detail["agents_not_applied"] == [str(fleet[1][0].pk), str(fleet[2][0].pk)]
        body = admin_api.get("/config/admin/rollout").json()
        assert (body["state"], body["reason"]) == ("paused", rollout.reason)
        assert body["wave_timeout_seconds"] == 600
        client.force_login(admin_user)
        page = client.get(f"/admin/rollouts/rollout/{rollout.pk}/change/").content.decode()
        assert "agent-1 (v1), agent-2 (v1)" in page
        assert "Wave timeout: 600 s" in page
        # Only canaries held it: nobody else got the new version meanwhile.
        assert [served(token) for _, token in fleet[3:]] == [1, 1]

        # The operator resumes: the wave has another 600 s from now, and goes on once applied.
        assert admin_api.post("/config/admin/rollout/resume").status_code == 200
        bake(300)
        services.advance_rollouts()
        assert Rollout.objects.get().state == "rolling"
        apply(fleet[1:3], 2)
        services.advance_rollouts()
        assert (Rollout.objects.get().state, Rollout.objects.get().wave) == ("rolling", 1)

    def test_an_agent_keeps_its_place_and_a_new_agent_joins_its_wave(self, admin_api, publish):
        # Ids chosen so that every agent that joins sorts before the first four in the order
        # of v2: the 4th of 8 hashes then falls before the 2nd of 4, and only the cutoff's
        # refusal to move back keeps the first wave's agents on v2.
        early, late = ids_in_order(8, version=2)[4:], ids_in_order(8, version=2)[:4]
        fleet = make_fleet_with_ids(early)
        start(admin_api, publish, plan={"waves": [50, 100], "bake_seconds": 600})
        before = {a.pk for a, _ in targeted(fleet, 2)}
        assert len(before) == 2
        # A restart changes nothing the controller keys on: the same agents stay targeted.
        services.advance_rollouts()
        assert {a.pk for a, _ in targeted(fleet, 2)} == before
        cutoff = Rollout.objects.get().cutoff
        joined = make_fleet_with_ids(late, first=4)
        services.advance_rollouts()
        # Half of the 8 agents would be the 4 that joined; nobody who had the new version
        # loses it, so the cutoff stays where it was, and the joined ones before it get v2.
        everyone = fleet + joined
        now_targeted = {a.pk for a, _ in targeted(everyone, 2)}
        assert before <= now_targeted
        assert len(now_targeted) == 6
        assert Rollout.objects.get().cutoff == cutoff
        order = [a.pk for a, _ in sorted(everyone, key=lambda p: agent_key(p[0].pk, 2))]
        assert set(order[: len(now_targeted)]) == now_targeted

    def test_agents_revoked_mid_rollout_never_send_the_next_wave_back(self, admin_api, publish):
        # 6 agents, waves of 50% then 60%: the first wave reaches the 3rd hash of 6. With the
        # 3 after it revoked, 60% of the 3 left is 2 agents, whose cutoff is the 2nd hash:
        # the next wave must not move the cutoff back past the 3rd agent.
        fleet = make_fleet_with_ids(ids_in_order(6, version=2))
        start(admin_api, publish, plan={"waves": [50, 60, 100], "bake_seconds": 0})
        first_wave = fleet[:3]
        assert {a.pk for a, _ in targeted(fleet, 2)} == {a.pk for a, _ in first_wave}
        cutoff = Rollout.objects.get().cutoff
        apply(first_wave, 2)
        for agent, _ in fleet[3:]:
            revoke_agent(agent)
        services.advance_rollouts()
        rollout = Rollout.objects.get()
        assert rollout.wave == 2
        assert rollout.cutoff == cutoff
        assert {a.pk for a, _ in targeted(first_wave, 2)} == {a.pk for a, _ in first_wave}
        assert wave_entries()[-1].detail["agents_targeted"] == 3


@pytest.mark.django_db(transaction=True)
class TestControls:
    def test_controls_need_an_admin_and_a_rollout(self, api, admin_api, agent_api):
        for action in ("promote", "pause", "resume", "abort"):
            assert api.post(f"/config/admin/rollout/{action}").status_code == 401
            assert agent_api.post(f"/config/admin/rollout/{action}").status_code == 401
            assert admin_api.post(f"/config/admin/rollout/{action}").status_code == 404
        assert api.get("/config/admin/rollout").status_code == 401

    def test_pause_holds_promote_moves_resume_goes_on(self, admin_api, publish):
        fleet = make_fleet()
        start(admin_api, publish, plan={**PLAN, "bake_seconds": 0})
        response = admin_api.post("/config/admin/rollout/pause", {"reason": "looking"}, "json")
        assert response.status_code == 200
        assert response.json()["state"] == "paused"
        assert response.json()["reason"] == "looking"
        assert admin_api.post("/config/admin/rollout/pause").status_code == 409
        apply(fleet, 2)
        services.advance_rollouts()
        assert Rollout.objects.get().wave == 0
        response = admin_api.post("/config/admin/rollout/promote", {"reason": "fine"}, "json")
        assert response.status_code == 200
        assert (response.json()["state"], response.json()["wave"]) == ("paused", 1)
        response = admin_api.post("/config/admin/rollout/resume")
        assert response.json()["state"] == "rolling"
        assert admin_api.post("/config/admin/rollout/resume").status_code == 409
        services.advance_rollouts()
        services.advance_rollouts()
        assert Rollout.objects.get().state == "completed"
        for action in ("promote", "pause", "resume", "abort"):
            assert admin_api.post(f"/config/admin/rollout/{action}").status_code == 409
        entry = AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_PAUSED).get()
        assert entry.actor == "admin@example.com"
        assert entry.detail["reason"] == "looking"
        promoted = wave_entries()[1]
        assert promoted.detail["how"] == "promoted"
        assert promoted.actor == "admin@example.com"

    def test_promote_on_the_last_wave_completes(self, admin_api, publish):
        make_fleet()
        start(admin_api, publish, plan={"waves": [100], "bake_seconds": 600})
        response = admin_api.post("/config/admin/rollout/promote")
        assert response.json()["state"] == "completed"

    def test_abort_publishes_the_previous_content_to_everyone(self, admin_api, publish):
        fleet = make_fleet()
        start(admin_api, publish)
        response = admin_api.post("/config/admin/rollout/abort", {"reason": "errors up"}, "json")
        assert response.status_code == 200
        assert response.json()["state"] == "aborted"
        assert response.json()["reason"] == "errors up"
        newest = ConfigVersion.objects.order_by("-version").first()
        assert (newest.version, newest.config_url, newest.rolled_back_from) == (3, URL, 1)
        assert {served(token) for _, token in fleet} == {3}
        aborted = AuditEntry.objects.get(action=AuditEntry.ROLLOUT_ABORTED)
        assert aborted.detail["reason"] == "errors up"
        assert aborted.actor == "admin@example.com"
        assert AuditEntry.objects.filter(action=AuditEntry.CONFIG_ROLLED_BACK).count() == 1
        assert admin_api.post("/config/admin/rollout/abort").status_code == 409

    def test_a_publish_during_a_rollout_is_409_and_a_rollback_goes_through(
        self, admin_api, publish
    ):
        fleet = make_fleet()
        start(admin_api, publish)
        audited = AuditEntry.objects.count()
        for method, body in (
            ("post", {"config_url": URL + "x", "pooling_interval": 30}),
            ("put", {"pooling_interval": 99}),
            ("post", {"config_url": URL + "x", "pooling_interval": 30, "rollout": PLAN}),
        ):
            response = getattr(admin_api, method)("/config/admin", body, "json")
            assert response.status_code == 409
            assert "version 2" in response.json()["detail"]
        assert ConfigVersion.objects.count() == 2
        assert AuditEntry.objects.count() == audited
        admin_api.post("/config/admin/rollout/pause")
        response = admin_api.post(
            "/config/admin", {"config_url": URL + "y", "pooling_interval": 30}, "json"
        )
        assert response.status_code == 409

        response = admin_api.post("/config/admin/rollback", {"version": 1}, "json")
        assert response.status_code == 201
        assert Rollout.objects.get().state == "aborted"
        assert {served(token) for _, token in fleet} == {3}
        assert (
            admin_api.post(
                "/config/admin", {"config_url": URL + "z", "pooling_interval": 30}, "json"
            ).status_code
            == 201
        )


@pytest.mark.parametrize(
    "percent, others, size",
    [
        (50, 4, 2),
        (25, 5, 2),
        (20, 5, 1),
        (10, 3, 1),
        (33, 3, 1),
        (34, 3, 2),
        (1, 1000, 10),
        (1, 1001, 11),
        (1, 1, 1),
        (100, 7, 7),
        (100, 0, 0),
    ],
)
def test_a_wave_is_the_ceiling_of_its_share(percent, others, size):
    assert services.wave_size(percent, others) == size


ALLOWED = {
    "promote": {"rolling", "paused"},
    "pause": {"rolling"},
    "resume": {"paused"},
    "abort": {"rolling", "paused"},
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("state", ["rolling", "paused", "completed", "halted", "aborted"])
@pytest.mark.parametrize("action", sorted(ALLOWED))
def test_each_control_is_409_in_a_state_that_does_not_allow_it(admin_api, publish, state, action):
    make_fleet()
    start(admin_api, publish, plan={**PLAN, "bake_seconds": 600})
    Rollout.objects.update(state=state)
    audited, versions = AuditEntry.objects.count(), ConfigVersion.objects.count()

    response = admin_api.post(f"/config/admin/rollout/{action}", {"reason": "r"}, "json")

    if state in ALLOWED[action]:
        assert response.status_code == 200, response.content
        assert AuditEntry.objects.count() > audited
        return
    assert response.status_code == 409, response.content
    assert f"it is {state}" in response.json()["detail"]
    # It should change nothing: state, audit log, versions.
    assert Rollout.objects.get().state == state
    assert (AuditEntry.objects.count(), ConfigVersion.objects.count()) == (audited, versions)


@pytest.mark.django_db(transaction=True)
class TestAdminControls:
    def control(self, rollout: Rollout, action: str) -> str:
        return f"/admin/rollouts/rollout/{rollout.pk}/control/{action}/"

    def test_a_control_confirmed_for_an_older_rollout_leaves_the_newer_alone(
        self, admin_api, publish, client, admin_user
    ):
        make_fleet()
        start(admin_api, publish, plan={"waves": [100], "bake_seconds": 600})
        older = Rollout.objects.get()
        client.force_login(admin_user)
        # The abort's confirmation page is opened while the rollout of v2 runs...
        assert client.get(self.control(older, "abort")).status_code == 200
        # ... v2 completes, and v3 starts rolling out meanwhile.
        assert admin_api.post("/config/admin/rollout/promote").status_code == 200
        answer = admin_api.put(
            "/config/admin", {"pooling_interval": 45, "rollout": {"bake_seconds": 600}}, "json"
        )
        assert answer.status_code == 200 and answer.json()["version"] == 3
        audited = AuditEntry.objects.count()

        for action in ("abort", "pause", "promote"):
            page = client.post(
                self.control(older, action), {"confirmed": "yes", "reason": "x"}, follow=True
            )
            assert page.status_code == 200
            # It should say why, and do nothing to the rollout of v3.
            assert "no longer the current one" in page.content.decode()
        assert Rollout.objects.get(version=3).state == "rolling"
        assert Rollout.objects.get(version=3).wave == 1
        assert ConfigVersion.objects.count() == 3
        assert AuditEntry.objects.count() == audited

    def test_a_control_needs_the_csrf_token_and_a_post(self, admin_api, publish, admin_user):
        from django.test import Client

        make_fleet()
        start(admin_api, publish)
        rollout = Rollout.objects.get()
        browser = Client(enforce_csrf_checks=True)
        browser.force_login(admin_user)
        page = self.control(rollout, "pause")
        form = {"confirmed": "yes", "reason": "x"}

        assert browser.post(page, form).status_code == 403
        assert Rollout.objects.get().state == "rolling"
        # A GET only shows the confirmation page.
        assert browser.get(page, form).status_code == 200
        assert Rollout.objects.get().state == "rolling"
        # The same form with the page's CSRF token is carried out.
        token = browser.cookies["csrftoken"].value
        done = browser.post(page, {**form, "csrfmiddlewaretoken": token}, follow=True)
        assert done.status_code == 200
        assert Rollout.objects.get().state == "paused"


@pytest.mark.django_db(transaction=True)
def test_concurrent_advances_start_each_wave_once():
    fleet = make_fleet(canaries=2, others=4)
    from apps.configs.actions import publish_config

    publish_config(config_url=URL, pooling_interval=30)
    publish_config(config_url=NEW_URL, pooling_interval=30, rollout={**PLAN, "bake_seconds": 0})
    apply(fleet, 2)
    barrier = threading.Barrier(6)

    def race():
        try:
            barrier.wait()
            for _ in range(5):
                services.advance_rollouts()
        finally:
            connection.close()

    threads = [threading.Thread(target=race) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Rollout.objects.get().state == "completed"
    assert [e.detail["wave"] for e in wave_entries()] == [0, 1, 2]
    assert AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_COMPLETED).count() == 1


@pytest.mark.django_db(transaction=True)
class TestStatusAndMetrics:
    def test_rollout_status_reports_and_gates(self, admin_api, publish):
        assert rollout_status()[0] == 1
        fleet = make_fleet(canaries=1, others=2)
        start(admin_api, publish, plan={**PLAN, "bake_seconds": 0})
        code, out = rollout_status()
        assert code == 1
        assert "rollout of v2 (from v1): rolling, wave 0 of 2" in out
        assert "canaries ring=canary; waves 50% 100%; bake 0 s" in out
        assert "3 total, 1 targeted, 0 applied, 1 waiting" in out
        assert "agent-0" in out and "applying" in out and "wave not started" in out
        # Each straggler with its last heartbeat.
        assert re.search(r"agent-0 \S+ on v0, last heartbeat \d\d:\d\d:\d\d \(\d+ s ago\)", out)
        code, out = rollout_status("--wait", "--timeout", "1.5")
        assert code == 1
        assert "timed out" in out

        apply(fleet, 2)
        services.advance_rollouts()
        services.advance_rollouts()
        services.advance_rollouts()
        code, out = rollout_status("--wait", "--timeout", "5")
        assert code == 0, out
        assert "completed" in out and "converged" in out

    def test_rollout_status_fails_on_abort_and_bad_usage(self, admin_api, publish):
        make_fleet()
        start(admin_api, publish)
        admin_api.post("/config/admin/rollout/abort")
        code, out = rollout_status("--wait")
        assert code == 1
        assert "aborted" in out
        assert rollout_status("--timeout", "5")[0] == 2
        assert rollout_status("--wait", "--timeout", "-1")[0] == 2

    def test_metrics_show_the_rollout_and_agents_per_target(self, admin_api, publish, api):
        def gauge(text: str, name: str, **labels: str) -> float | None:
            return sample(text, name, **DEFAULT_SCOPE, **labels)

        make_fleet(canaries=2, others=4)
        text = api.get("/metrics").content.decode()
        assert gauge(text, "controller_rollout_state", state="rolling") == 0
        start(admin_api, publish)
        text = api.get("/metrics").content.decode()
        assert gauge(text, "controller_rollout_state", state="rolling") == 1
        assert gauge(text, "controller_rollout_state", state="completed") == 0
        assert gauge(text, "controller_rollout_version") == 2
        assert gauge(text, "controller_agents_by_target_version", version="2") == 2
        assert gauge(text, "controller_agents_by_target_version", version="1") == 4
        rollout = Rollout.objects.get()
        started = gauge(text, "controller_rollout_wave_started_timestamp_seconds")
        assert started == pytest.approx(rollout.wave_started_at.timestamp())
        # No wave timeout in the plan: the bake time and an hour.
        assert gauge(text, "controller_rollout_wave_allowed_seconds") == rollout.bake_seconds + 3600
        # Wave 1: half the others by their hash.
        bake(600)
        assert admin_api.post("/config/admin/rollout/promote").status_code == 200
        text = api.get("/metrics").content.decode()
        assert gauge(text, "controller_agents_by_target_version", version="2") == 4
        assert gauge(text, "controller_agents_by_target_version", version="1") == 2
        # The wave's clock starts again (the bake above moved the first wave's start back).
        assert gauge(text, "controller_rollout_wave_started_timestamp_seconds") == pytest.approx(
            Rollout.objects.get().wave_started_at.timestamp()
        )


@pytest.mark.django_db(transaction=True)
def test_a_plan_rides_a_change_request_and_rolls_out_when_approved(publish, settings):

    from apps.accounts.models import User
    from apps.accounts.roles import APPROVER, EDITOR
    from apps.accounts.services import set_roles
    from apps.changes.models import ChangeRequest

    def client_for(email, role):
        user = User.objects.create_user(email=email, password=None)
        set_roles(user, [role])
        return api_as(user)

    publish(URL, 30)
    set_approvals(1)
    editor, approver = client_for("ed@example.com", EDITOR), client_for("ap@example.com", APPROVER)
    proposed = editor.post(
        "/config/admin", {"config_url": NEW_URL, "pooling_interval": 30, "rollout": PLAN}, "json"
    )
    assert proposed.status_code == 202, proposed.content
    change = proposed.json()
    assert change["rollout"]["waves"] == PLAN["waves"]
    assert ChangeRequest.objects.get().rollout["waves"] == PLAN["waves"]
    assert ConfigVersion.objects.count() == 1 and not Rollout.objects.exists()
    approved = approver.post(f"/config/admin/changes/{change['id']}/approve", {}, "json")
    assert approved.status_code == 200, approved.content
    assert approved.json()["published_version"] == 2
    rollout = Rollout.objects.get(version=2)
    assert rollout.waves == PLAN["waves"]
    assert rollout.state == Rollout.ROLLING


@pytest.mark.django_db(transaction=True)
def test_a_plan_is_refused_with_an_emergency(admin_api, publish):
    publish(URL, 30)
    response = admin_api.post(
        "/config/admin",
        {
            "config_url": NEW_URL,
            "pooling_interval": 30,
            "rollout": PLAN,
            "emergency": True,
            "reason": "now",
        },
        "json",
    )
    assert response.status_code == 400
    assert "direct publish" in response.json()["detail"]
    assert ConfigVersion.objects.count() == 1
    assert not Rollout.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_heartbeats_through_the_fast_path_keep_the_labels_in_their_batch():
    from apps.agents.services import record_heartbeats

    fleet = make_fleet(canaries=1, others=1)
    (canary, _), (other, _) = fleet
    now = timezone.now()
    record_heartbeats({canary.pk: (now, 3, [], []), other.pk: (now, 4, [], [])})
    canary.refresh_from_db()
    other.refresh_from_db()
    assert (canary.labels, canary.applied_version) == ({"ring": "canary"}, 3)
    assert (other.labels, other.applied_version) == ({"ring": "main"}, 4)
