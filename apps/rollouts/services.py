"""Staged rollouts: how a publish starts one, how its waves advance, and the operator's promote,
pause, resume and abort. Every change of a rollout's state happens in this module, under the
rollout's row lock, with its audit entry in the same transaction and the agents told after the
commit.

Which agents get the new version is decided by one rule, `targets_new`: the canaries (agents
carrying every canary label) from the start, and of the others those whose hash of (agent id,
version) sorts at or before the rollout's `cutoff`. The cutoff is the hash of the last agent the
started waves reach, so an agent keeps its place across restarts, a new agent lands in the wave
its hash puts it in, and the watch answers each agent without a query.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from django.db import transaction
from django.db.models import Count, F
from django.utils import timezone
from rest_framework import status

from apps.agents.models import Agent, AgentHits
from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from apps.ops import metrics
from apps.rollouts.health import health_of, judge, votes_of
from apps.rollouts.models import Rollout
from apps.rollouts.targets import agent_key, is_canary, target_version_expression, targets_new
from controller_site.errors import NotFoundError, ServiceError

logger = logging.getLogger(__name__)

# The admin's chart keeps at most this many points; older ones are thinned out.
PROGRESS_POINTS = 500
# Agents that have not reported for this many polling periods hold nothing back.
STALE_PERIODS = 3
# A reason or an audit entry names at most this many agents (and says how many more).
AGENTS_NAMED = 20


class RolloutConflict(ServiceError):
    """The rollout's state does not allow what was asked (409)."""

    status_code = status.HTTP_409_CONFLICT


class RolloutInProgress(RolloutConflict):
    def __init__(self, rollout: Rollout) -> None:
        super().__init__(
            f"The rollout of version {rollout.version} is {rollout.state} (wave {rollout.wave} "
            f"of {rollout.last_wave}): promote it to the end, or abort it, before publishing "
            f"again. POST /config/admin/rollback always goes through."
        )
        self.rollout = rollout


class NoRollout(NotFoundError):
    def __init__(self) -> None:
        super().__init__("No rollout has been started yet.")


class NothingToRollOutFrom(ServiceError):
    def __init__(self) -> None:
        super().__init__(
            "A rollout needs a current version to roll out from; publish the first version "
            "without one."
        )


class RolloutPlanNeedsDirectPublish(ServiceError):
    def __init__(self) -> None:
        super().__init__(
            "A rollout plan goes with a direct publish; while approvals are required (or for an "
            "emergency) a change goes to every agent at once when published."
        )


# Who gets what ------------------------------------------------------------------------------


def wave_size(percent: int, others: int) -> int:
    """ceil(percent% of others), in whole numbers: 50% of 4 is exactly 2."""
    return -(-percent * others // 100)


def cutoff_for(rollout: Rollout, wave: int, agents: list[dict]) -> str:
    """The hash of the last agent wave `wave` reaches among `agents`. Callers keep the larger
    of this and the rollout's cutoff so far: the cutoff only moves forward, and an agent that
    was given the new version is never sent back (agents joining or leaving move the k-th
    hash, and workers refuse older versions anyway)."""
    if wave == 0:
        return ""
    keys = sorted(
        agent_key(agent["id"], rollout.version)
        for agent in agents
        if not is_canary(agent["labels"] or {}, rollout.canary_labels)
    )
    count = wave_size(rollout.waves[wave - 1], len(keys))
    return keys[count - 1] if count else ""


def fleet() -> list[dict]:
    """The agents a rollout counts: every one not revoked."""
    return list(
        Agent.objects.filter(revoked_at__isnull=True).values(
            "id", "name", "hostname", "labels", "last_seen", "applied_version"
        )
    )


@dataclass
class Progress:
    """Where a rollout stands among the agents, at one moment."""

    total: int = 0
    targeted: int = 0
    applied: int = 0
    # Live agents of the started waves that have not applied the version yet.
    waiting: list[dict] = field(default_factory=list)
    # Agents of the started waves that have not reported lately; they hold nothing back.
    stale: list[dict] = field(default_factory=list)
    # Every agent with its target, for the status command and the admin page.
    agents: list[dict] = field(default_factory=list)

    @property
    def wave_applied(self) -> bool:
        return not self.waiting


def stale_before(interval: int | None, now: datetime) -> datetime:
    return now - timedelta(seconds=STALE_PERIODS * (interval or 10))


def measure(rollout: Rollout, agents: list[dict] | None = None, now=None) -> Progress:
    """Count the agents of the rollout's started waves, and which of them applied it."""
    from apps.configs.models import ConfigVersion

    now = now or timezone.now()
    agents = fleet() if agents is None else agents
    interval = (
        ConfigVersion.objects.filter(version=rollout.version)
        .values_list("pooling_interval", flat=True)
        .first()
    )
    split = {"canary_labels": rollout.canary_labels, "cutoff": rollout.cutoff}
    finished = rollout.state == Rollout.COMPLETED
    stale_line = stale_before(interval, now)
    progress = Progress(total=len(agents))
    for agent in agents:
        targeted = finished or targets_new(split, rollout.version, agent["id"], agent["labels"])
        applied = (agent["applied_version"] or 0) >= rollout.version
        stale = agent["last_seen"] is None or agent["last_seen"] < stale_line
        agent = {**agent, "targeted": targeted, "applied": applied, "stale": stale}
        progress.agents.append(agent)
        if not targeted:
            continue
        progress.targeted += 1
        if applied:
            progress.applied += 1
        elif stale:
            progress.stale.append(agent)
        else:
            progress.waiting.append(agent)
    return progress


def agents_by_target(state: dict) -> dict[int, int]:
    """How many agents (not revoked) the controller answers each version now, counted by the
    database (one row per version, however large the fleet is at each scrape)."""
    rows = (
        Agent.objects.filter(revoked_at__isnull=True)
        .annotate(target=target_version_expression(state))
        .values("target")
        .annotate(agents=Count("pk"))
        .order_by()
    )
    return {row["target"]: row["agents"] for row in rows}


# Starting ------------------------------------------------------------------------------------


def guard_publish(
    sender,
    *,
    newest,
    rolling_back: bool,
    rollout: dict | None,
    actor=None,
    source_ip=None,
    reason: str = "",
    expect_rollout: int | None = None,
    halt: dict | None = None,
    **kwargs,
) -> None:
    """publish_config's `publishing` signal, under the writers' lock, before a version is made.
    A publish during a rolling or paused rollout is refused; a rollback aborts whatever rollout
    still splits the fleet and goes to everyone at once. `expect_rollout` (an abort, a halt)
    insists that the rollout of that version is still the one splitting the fleet. `halt` (the
    health gate's numbers) ends it as halted rather than aborted."""
    if rollout is not None and newest is None:
        raise NothingToRollOutFrom()
    active = None
    if newest is not None:
        active = (
            Rollout.objects.select_for_update()
            .filter(version=newest.version, state__in=Rollout.SPLIT_STATES)
            .first()
        )
    if expect_rollout is not None and (active is None or active.version != expect_rollout):
        raise RolloutConflict(
            f"The rollout of version {expect_rollout} has ended meanwhile; nothing was aborted."
        )
    if active is None:
        return
    if not rolling_back:
        if active.state in Rollout.ACTIVE_STATES:
            raise RolloutInProgress(active)
        return
    if halt is not None:
        _finish(active, Rollout.HALTED, AuditEntry.ROLLOUT_HALTED, **halt)
        transaction.on_commit(partial(_count_stop, Rollout.HALTED))
        return
    _finish(
        active,
        Rollout.ABORTED,
        AuditEntry.ROLLOUT_ABORTED,
        actor=actor,
        source_ip=source_ip,
        reason=reason or "rolled back",
    )


def start_rollout_of_plan(
    sender, *, config, previous, rollout: dict | None, actor=None, source_ip=None, **kwargs
) -> None:
    """publish_config's `published` signal: a publish with a plan starts its rollout."""
    if rollout is not None:
        start_rollout(config, previous, rollout, actor=actor, source_ip=source_ip)


def start_rollout(config, previous, plan: dict, *, actor=None, source_ip=None) -> Rollout:
    """In the transaction that made `config`: the new version goes to the canaries (or the
    first wave when there are none) and the others keep `previous`."""
    if previous is None:
        raise NothingToRollOutFrom()
    now = timezone.now()
    rollout = Rollout(
        version=config.version,
        previous_version=previous.version,
        waves=plan.get("waves") or [100],
        canary_labels=plan.get("canary_labels") or {},
        bake_seconds=plan.get("bake_seconds") or 0,
        auto_rollback=plan.get("auto_rollback", True),
        max_failure_rate=plan.get("max_failure_rate", 0.2),
        min_hits=plan.get("min_hits", 20),
        wave_timeout_seconds=plan.get("wave_timeout_seconds"),
        started_at=now,
        wave_started_at=now,
        created_by=actor,
        reason=plan.get("reason", ""),
    )
    rollout.wave = 0 if rollout.canary_labels else 1
    agents = fleet()
    rollout.cutoff = cutoff_for(rollout, rollout.wave, agents)
    rollout.progress = [[0, 0]]
    rollout.save()
    count_hits_from_now(rollout)
    _audit(
        rollout,
        AuditEntry.ROLLOUT_STARTED,
        actor=actor,
        source_ip=source_ip,
        previous_version=rollout.previous_version,
        waves=rollout.waves,
        canary_labels=rollout.canary_labels,
        bake_seconds=rollout.bake_seconds,
        auto_rollback=rollout.auto_rollback,
        max_failure_rate=rollout.max_failure_rate,
        min_hits=rollout.min_hits,
        wave_timeout_seconds=rollout.wave_timeout_seconds,
    )
    _record_wave(rollout, agents, actor=actor, source_ip=source_ip, how="started")
    logger.info(
        "rollout of v%s started: waves %s after canaries %s, bake %ss",
        rollout.version,
        rollout.waves,
        rollout.canary_labels or "(none)",
        rollout.bake_seconds,
    )
    return rollout


def count_hits_from_now(rollout: Rollout) -> None:
    """The health gate counts each agent's hits of the new version from now on: at the start
    (hits a version had before it existed were never the fleet's) and at a resume (the operator
    chose to accept those before)."""
    AgentHits.objects.filter(version=rollout.version).update(
        baseline_ok=F("ok"), baseline_failed=F("failed")
    )


# Advancing -----------------------------------------------------------------------------------


def advance_rollouts(now=None) -> Rollout | None:
    """One step of the rollout that is rolling, if any: start its next wave when the current
    one is applied by all its live agents and has baked, complete it after the last, and keep
    the cutoff in step with agents that joined or left. Each controller process calls this
    about once a second; the row lock makes exactly one of them act on each step, and the
    others skip the step rather than wait. Returns the rollout when this call changed it."""
    with transaction.atomic():
        rollout = (
            Rollout.objects.select_for_update(skip_locked=True)
            .filter(state=Rollout.ROLLING)
            .order_by("-version")
            .first()
        )
        if rollout is None:
            return None
        now = now or timezone.now()
        agents = fleet()
        progress = measure(rollout, agents, now)
        changed = _note_progress(rollout, progress, now)
        if not progress.wave_applied and _wave_timed_out(rollout, now):
            _pause_stalled_wave(rollout, progress)
            return rollout
        baked = now >= rollout.wave_started_at + timedelta(seconds=rollout.bake_seconds)
        if progress.wave_applied and baked:
            if rollout.wave >= rollout.last_wave:
                _finish(rollout, Rollout.COMPLETED, AuditEntry.ROLLOUT_COMPLETED)
                return rollout
            rollout.wave += 1
            rollout.wave_started_at = now
            _record_wave(rollout, agents, how="advanced")
            return rollout
        cutoff = max(rollout.cutoff, cutoff_for(rollout, rollout.wave, agents))
        if cutoff != rollout.cutoff:
            # Agents registered: the same percentage now reaches further along the order.
            rollout.cutoff = cutoff
            rollout.revision += 1
            changed = True
            transaction.on_commit(_announce)
        if changed:
            rollout.save()
            return rollout
        return None


def _wave_timed_out(rollout: Rollout, now) -> bool:
    timeout = rollout.wave_timeout_seconds
    return timeout is not None and now >= rollout.wave_started_at + timedelta(seconds=timeout)


def _agent_name(agent: dict) -> str:
    return agent["name"] or agent["hostname"] or str(agent["id"])


def _pause_stalled_wave(rollout: Rollout, progress: Progress) -> None:
    """Under the row lock of advance_rollouts: the wave's time is up while live agents still
    report an older version. A stalled agent would hold the rollout forever; an operator
    decides (promote, resume for another wave_timeout_seconds, or abort)."""
    waiting = progress.waiting
    named = ", ".join(
        f"{_agent_name(agent)} (v{agent['applied_version'] or 0})"
        for agent in waiting[:AGENTS_NAMED]
    )
    if len(waiting) > AGENTS_NAMED:
        named += f" and {len(waiting) - AGENTS_NAMED} more"
    rollout.state = Rollout.PAUSED
    rollout.reason = (
        f"wave {rollout.wave} was not applied within {rollout.wave_timeout_seconds} s: "
        f"{len(waiting)} of {progress.targeted} agents still report an older version: {named}"
    )
    rollout.save()
    _audit(
        rollout,
        AuditEntry.ROLLOUT_PAUSED,
        automatic=True,
        reason=rollout.reason,
        wave_timeout_seconds=rollout.wave_timeout_seconds,
        agents_not_applied=[str(agent["id"]) for agent in waiting[:AGENTS_NAMED]],
    )
    logger.warning("rollout of v%s paused: %s", rollout.version, rollout.reason)


def _note_progress(rollout: Rollout, progress: Progress, now) -> bool:
    points = rollout.progress or []
    if points and points[-1][1] == progress.applied:
        return False
    points.append([round((now - rollout.started_at).total_seconds(), 1), progress.applied])
    if len(points) > PROGRESS_POINTS:
        points = points[:1] + points[2::2] + points[-1:]
    rollout.progress = points
    return True


def _record_wave(rollout: Rollout, agents, *, actor=None, source_ip=None, how: str) -> None:
    """Start wave `rollout.wave`: new cutoff, saved, audited, and the agents told after commit."""
    if rollout.pk is not None:
        rollout.cutoff = max(rollout.cutoff, cutoff_for(rollout, rollout.wave, agents))
        rollout.revision += 1
        rollout.save()
    progress = measure(rollout, agents)
    _audit(
        rollout,
        AuditEntry.ROLLOUT_WAVE_STARTED,
        actor=actor,
        source_ip=source_ip,
        percent=0 if rollout.wave == 0 else rollout.waves[rollout.wave - 1],
        canaries=rollout.wave == 0,
        agents_targeted=progress.targeted,
        how=how,
    )
    logger.info(
        "rollout of v%s: wave %s of %s started (%s agents targeted, %s)",
        rollout.version,
        rollout.wave,
        rollout.last_wave,
        progress.targeted,
        how,
    )
    transaction.on_commit(_announce)


def _finish(
    rollout, state: str, action: str, *, actor=None, source_ip=None, reason="", **detail
) -> None:
    rollout.state = state
    rollout.finished_at = timezone.now()
    rollout.revision += 1
    if reason:
        rollout.reason = reason
    if state == Rollout.COMPLETED:
        rollout.cutoff = ""
    rollout.save()
    _audit(rollout, action, actor=actor, source_ip=source_ip, reason=reason, **detail)
    logger.info("rollout of v%s %s at wave %s", rollout.version, state, rollout.wave)
    transaction.on_commit(_announce)


def _announce() -> None:
    from apps.configs.services import announce_current_state

    announce_current_state()


# The operator's controls ---------------------------------------------------------------------


def get_latest_rollout() -> Rollout | None:
    return Rollout.objects.select_related("created_by").order_by("-version").first()


def _lock_latest(version: int | None = None) -> Rollout:
    rollout = Rollout.objects.select_for_update().order_by("-version").first()
    if rollout is None:
        raise NoRollout()
    _insist_on(rollout, version)
    return rollout


def _insist_on(rollout: Rollout, version: int | None) -> None:
    # A control confirmed on a page about one rollout must not act on a newer one.
    if version is not None and rollout.version != version:
        raise RolloutConflict(
            f"The rollout of version {version} is no longer the current one (the rollout of "
            f"version {rollout.version} is); nothing was done."
        )


def _refuse(rollout: Rollout, what: str) -> RolloutConflict:
    return RolloutConflict(
        f"Cannot {what} the rollout of version {rollout.version}: it is {rollout.state}."
    )


def _audit(rollout: Rollout, action: str, *, actor=None, source_ip=None, **detail) -> None:
    """One audit entry about the rollout, naming its version and wave."""
    record_event(
        action,
        actor=actor,
        source_ip=source_ip,
        target=f"rollout v{rollout.version}",
        detail={"version": rollout.version, "wave": rollout.wave, **detail},
    )


@transaction.atomic
def promote_rollout(
    *, actor=None, source_ip=None, reason: str = "", version: int | None = None
) -> Rollout:
    """Start the next wave now, without waiting for the current one to apply or bake; on the
    last wave, complete the rollout."""
    rollout = _lock_latest(version)
    if rollout.state not in Rollout.ACTIVE_STATES:
        raise _refuse(rollout, "promote")
    _audit(rollout, AuditEntry.ROLLOUT_PROMOTED, actor=actor, source_ip=source_ip, reason=reason)
    if rollout.wave >= rollout.last_wave:
        _finish(
            rollout, Rollout.COMPLETED, AuditEntry.ROLLOUT_COMPLETED, actor=actor, reason=reason
        )
        return rollout
    rollout.wave += 1
    rollout.wave_started_at = timezone.now()
    if reason:
        rollout.reason = reason
    _record_wave(rollout, fleet(), actor=actor, source_ip=source_ip, how="promoted")
    return rollout


@transaction.atomic
def pause_rollout(
    *, actor=None, source_ip=None, reason: str = "", version: int | None = None
) -> Rollout:
    """Hold the rollout where it is: started waves keep the new version, no new wave starts."""
    rollout = _lock_latest(version)
    if rollout.state != Rollout.ROLLING:
        raise _refuse(rollout, "pause")
    rollout.state = Rollout.PAUSED
    rollout.reason = reason
    rollout.save()
    _audit(rollout, AuditEntry.ROLLOUT_PAUSED, actor=actor, source_ip=source_ip, reason=reason)
    return rollout


@transaction.atomic
def resume_rollout(
    *, actor=None, source_ip=None, reason: str = "", version: int | None = None
) -> Rollout:
    """Let a paused rollout go on; the current wave's bake time counts from now, and the health
    gate counts the new version's hits from now (a halted rollout is over: it put everyone back
    on the previous content)."""
    rollout = _lock_latest(version)
    if rollout.state != Rollout.PAUSED:
        raise _refuse(rollout, "resume")
    rollout.state = Rollout.ROLLING
    rollout.reason = reason
    rollout.wave_started_at = timezone.now()
    rollout.save()
    count_hits_from_now(rollout)
    _audit(rollout, AuditEntry.ROLLOUT_RESUMED, actor=actor, source_ip=source_ip, reason=reason)
    return rollout


def abort_rollout(
    *, actor=None, source_ip=None, reason: str = "", version: int | None = None
) -> Rollout:
    """Put every agent back on the previous version's content at once. Workers refuse older
    versions, so this publishes a new version carrying the previous content, as a rollback
    does; the history shows it as a rollback and the audit log as the rollout's abort."""
    from apps.configs.services import rollback_config

    rollout = get_latest_rollout()
    if rollout is None:
        raise NoRollout()
    _insist_on(rollout, version)
    if rollout.state not in Rollout.SPLIT_STATES:
        raise _refuse(rollout, "abort")
    rollback_config(
        version=rollout.previous_version,
        actor=actor,
        source_ip=source_ip,
        reason=reason or "aborted",
        expect_rollout=rollout.version,
    )
    rollout.refresh_from_db()
    return rollout


# The health gate (apps.rollouts.health judges, these act) -------------------------------------


def evaluate_rollout_health(versions) -> Rollout | None:
    """Run the gate on the rolling or paused rollout, if hits of its new version were just
    recorded (`versions`: the versions of the hits in the batch written). The new version's
    rate only moves with its own hits; the previous version's hits are read when it is judged.
    Returns the rollout when this call halted or paused it."""
    versions = set(versions)
    if not versions:
        return None
    rollout = (
        Rollout.objects.filter(state__in=Rollout.ACTIVE_STATES)
        .order_by("-version")
        .only(
            "pk",
            "version",
            "previous_version",
            "state",
            "reason",
            "auto_rollback",
            "max_failure_rate",
            "min_hits",
            "canary_labels",
            "cutoff",
        )
        .first()
    )
    if rollout is None or rollout.version not in versions:
        return None
    if rollout.state == Rollout.PAUSED and not rollout.auto_rollback:
        # Paused already, and nothing more to do than wait for the operator.
        return None
    verdict = judge(rollout, votes_of(rollout), partial(_only_target, rollout))
    if not verdict.stop:
        if verdict.reason and rollout.state == Rollout.ROLLING:
            # Kept up to date for the admin and rollout_status (an operator's pause reason is
            # left alone); a conditional UPDATE, so no lock is waited for.
            Rollout.objects.filter(pk=rollout.pk, state=Rollout.ROLLING).exclude(
                reason=verdict.reason
            ).update(reason=verdict.reason)
        return None
    new, previous = health_of(rollout)
    detail = {
        "reason": verdict.reason,
        "agents_judged": verdict.judged,
        "agents_failing": list(verdict.failing[:AGENTS_NAMED]),
        "hits": new.as_dict(),
        "previous_hits": previous.as_dict(),
        "max_failure_rate": rollout.max_failure_rate,
        "min_hits": rollout.min_hits,
    }
    if rollout.auto_rollback:
        return halt_rollout(rollout, detail)
    return pause_unhealthy_rollout(rollout, detail)


def _only_target(rollout: Rollout, agent_id: str) -> bool:
    """Whether `agent_id` is the only live agent (not revoked, heard from lately) that the
    rollout gives its new version: then its vote alone may stop the rollout."""
    from apps.configs.models import ConfigVersion

    interval = (
        ConfigVersion.objects.filter(version=rollout.version)
        .values_list("pooling_interval", flat=True)
        .first()
    )
    split = {
        "previous": {"version": rollout.previous_version},
        "canary_labels": rollout.canary_labels,
        "cutoff": rollout.cutoff,
    }
    others = (
        Agent.objects.filter(
            revoked_at__isnull=True, last_seen__gte=stale_before(interval, timezone.now())
        )
        .exclude(pk=agent_id)
        .annotate(target=target_version_expression({"version": rollout.version, "rollout": split}))
        .filter(target=rollout.version)
    )
    return not others.exists()


def _count_stop(state: str) -> None:
    metrics.instruments().rollouts_halted.labels(state).inc()


def halt_rollout(rollout: Rollout, detail: dict) -> Rollout | None:
    """Halt the rollout and put every agent back on the previous version's content at once: a
    rollback, as an abort is, that insists this rollout is still the one splitting the fleet.
    Of several processes deciding at once, the first to take the writers' lock halts it; the
    others find it ended and get None. `detail` (the numbers, with the `reason`) is audited."""
    from apps.configs.services import rollback_config

    try:
        config, _ = rollback_config(
            version=rollout.previous_version,
            reason=detail["reason"],
            expect_rollout=rollout.version,
            halt=detail,
        )
    except RolloutConflict:
        return None
    rollout.refresh_from_db()
    logger.warning(
        "rollout of v%s halted: %s; every agent goes back to v%s's content as v%s",
        rollout.version,
        detail["reason"],
        rollout.previous_version,
        config.version,
    )
    return rollout


def pause_unhealthy_rollout(rollout: Rollout, detail: dict) -> Rollout | None:
    """The plan's auto_rollback is off: pause the rollout for an operator. The row lock and the
    state in the WHERE make exactly one process pause it; one that waited finds it paused and
    gets None."""
    with transaction.atomic():
        rollout = (
            Rollout.objects.select_for_update().filter(pk=rollout.pk, state=Rollout.ROLLING).first()
        )
        if rollout is None:
            return None
        rollout.state = Rollout.PAUSED
        rollout.reason = detail["reason"]
        rollout.save()
        _audit(rollout, AuditEntry.ROLLOUT_PAUSED, automatic=True, **detail)
        transaction.on_commit(partial(_count_stop, Rollout.PAUSED))
    logger.warning(
        "rollout of v%s paused for an operator (auto_rollback off): %s",
        rollout.version,
        detail["reason"],
    )
    return rollout
