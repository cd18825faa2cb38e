"""Staged rollouts: how a publish starts one and a rollback ends one, how its waves advance, and
the operator's promote, pause and resume. Every change of a rollout's state happens in this
module, under the rollout's row lock, with its audit entry in the same transaction and the agents
told after the commit. The publishes that start and end rollouts (and the abort and the health
gate's halt, which are rollbacks) are made by apps.configs.actions, which calls in here under the
writers' lock; where a rollout stands is apps.rollouts.status, and its health gate
apps.rollouts.health.

Which agents get the new version is decided by one rule, `targets_new`: the canaries (agents
carrying every canary label) from the start, and of the others those whose hash of (agent id,
version) sorts at or before the rollout's `cutoff`. The cutoff is the hash of the last agent the
started waves reach, so an agent keeps its place across restarts, a new agent lands in the wave
its hash puts it in, and the watch answers each agent without a query.
"""

import logging
from datetime import timedelta
from functools import partial

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.agents.models import AgentHits
from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from apps.configs.models import ConfigVersion
from apps.configs.services import announce_current_state
from apps.ops import metrics
from apps.rollouts.errors import NoRollout, NothingToRollOutFrom, RolloutConflict, RolloutInProgress
from apps.rollouts.models import Rollout
from apps.rollouts.status import Progress, fleet, get_latest_rollout, measure
from apps.rollouts.targets import agent_key, is_canary
from apps.scopes.services import scope_names
from apps.webhooks.events import emit

logger = logging.getLogger(__name__)

# The admin's chart keeps at most this many points; older ones are thinned out.
PROGRESS_POINTS = 500
# A reason or an audit entry names at most this many agents (and says how many more).
AGENTS_NAMED = 20


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


# Starting ------------------------------------------------------------------------------------


def _split_rollout(newest: ConfigVersion | None) -> Rollout | None:
    """The rollout of the newest version while it splits the fleet, locked."""
    if newest is None:
        return None
    return (
        Rollout.objects.select_for_update()
        .filter(scope_id=newest.scope_id, version=newest.version, state__in=Rollout.SPLIT_STATES)
        .first()
    )


def refuse_publish_during_rollout(newest: ConfigVersion | None) -> None:
    """Under the writers' lock, before a publish makes its version: while a rollout is rolling
    or paused a publish would strand the agents that have not reached its version yet."""
    active = _split_rollout(newest)
    if active is not None and active.state in Rollout.ACTIVE_STATES:
        raise RolloutInProgress(active)


def end_split_rollout(
    newest: ConfigVersion | None,
    *,
    actor=None,
    source_ip: str | None = None,
    reason: str = "",
    expect_version: int | None = None,
    halt: dict | None = None,
) -> None:
    """Under the writers' lock, before a rollback makes its version: the rollback goes to every
    agent at once, so the rollout still splitting the fleet is aborted. `expect_version` (an
    abort, a halt) insists that the rollout of that version is still the one splitting the
    fleet. `halt` (the health gate's numbers) ends it as halted rather than aborted."""
    active = _split_rollout(newest)
    if expect_version is not None and (active is None or active.version != expect_version):
        raise RolloutConflict(
            f"The rollout of version {expect_version} has ended meanwhile; nothing was aborted."
        )
    if active is None:
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


def start_rollout(config, previous, plan: dict, *, actor=None, source_ip=None) -> Rollout:
    """In the transaction that made `config`: the new version goes to the canaries (or the
    first wave when there are none) and the others keep `previous`."""
    if previous is None:
        raise NothingToRollOutFrom()
    now = timezone.now()
    rollout = Rollout(
        scope_id=config.scope_id,
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
    agents = fleet(rollout.scope_id)
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
    AgentHits.objects.filter(agent__scope_id=rollout.scope_id, version=rollout.version).update(
        baseline_ok=F("ok"), baseline_failed=F("failed")
    )


# Advancing -----------------------------------------------------------------------------------


def advance_rollouts(now=None) -> list[Rollout]:
    """One step of every rolling rollout (one per scope at most): see advance_rollout. Returns
    the rollouts this call changed."""
    now = now or timezone.now()
    rolling = Rollout.objects.filter(state=Rollout.ROLLING).values_list("pk", flat=True)
    return [rollout for pk in list(rolling) if (rollout := advance_rollout(pk, now)) is not None]


def advance_rollout(pk: int, now) -> Rollout | None:
    """One step of a rollout, if it is still rolling: start its next wave when the current one
    is applied by all its live agents and has baked, complete it after the last, and keep the
    cutoff in step with agents that joined or left. Each controller process calls this about
    once a second; the row lock makes exactly one of them act on each step, and the others
    skip the step rather than wait. Returns the rollout when this call changed it."""
    with transaction.atomic():
        rollout = (
            Rollout.objects.select_for_update(skip_locked=True)
            .filter(pk=pk, state=Rollout.ROLLING)
            .first()
        )
        if rollout is None:
            return None
        agents = fleet(rollout.scope_id)
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
            transaction.on_commit(partial(announce_current_state, rollout.scope_id))
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
    transaction.on_commit(partial(announce_current_state, rollout.scope_id))


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
    transaction.on_commit(partial(announce_current_state, rollout.scope_id))


# The operator's controls ---------------------------------------------------------------------


def _lock_latest(scope_id: int, version: int | None = None) -> Rollout:
    rollout = (
        Rollout.objects.select_for_update().filter(scope_id=scope_id).order_by("-version").first()
    )
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


# The rollout's audit actions that are webhook events of the same name (a promote is told as
# the wave it starts, or the completion).
EVENTS = {
    AuditEntry.ROLLOUT_STARTED,
    AuditEntry.ROLLOUT_WAVE_STARTED,
    AuditEntry.ROLLOUT_PAUSED,
    AuditEntry.ROLLOUT_RESUMED,
    AuditEntry.ROLLOUT_COMPLETED,
    AuditEntry.ROLLOUT_HALTED,
    AuditEntry.ROLLOUT_ABORTED,
}


def _audit(rollout: Rollout, action: str, *, actor=None, source_ip=None, **detail) -> None:
    """One audit entry about the rollout, naming its version and wave, and its webhook event."""
    scope = scope_names(rollout.scope_id)
    detail = {"version": rollout.version, "wave": rollout.wave, **detail}
    entry = record_event(
        action,
        actor=actor,
        source_ip=source_ip,
        target=f"rollout v{rollout.version}",
        scope=scope,
        detail=detail,
    )
    if action in EVENTS:
        emit(action, {**detail, "actor": entry.actor}, scope)


@transaction.atomic
def promote_rollout(
    scope_id: int, *, actor=None, source_ip=None, reason: str = "", version: int | None = None
) -> Rollout:
    """Start the next wave now, without waiting for the current one to apply or bake; on the
    last wave, complete the rollout."""
    rollout = _lock_latest(scope_id, version)
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
    _record_wave(rollout, fleet(rollout.scope_id), actor=actor, source_ip=source_ip, how="promoted")
    return rollout


@transaction.atomic
def pause_rollout(
    scope_id: int, *, actor=None, source_ip=None, reason: str = "", version: int | None = None
) -> Rollout:
    """Hold the rollout where it is: started waves keep the new version, no new wave starts."""
    rollout = _lock_latest(scope_id, version)
    if rollout.state != Rollout.ROLLING:
        raise _refuse(rollout, "pause")
    rollout.state = Rollout.PAUSED
    rollout.reason = reason
    rollout.save()
    _audit(rollout, AuditEntry.ROLLOUT_PAUSED, actor=actor, source_ip=source_ip, reason=reason)
    return rollout


@transaction.atomic
def resume_rollout(
    scope_id: int, *, actor=None, source_ip=None, reason: str = "", version: int | None = None
) -> Rollout:
    """Let a paused rollout go on; the current wave's bake time counts from now, and the health
    gate counts the new version's hits from now (a halted rollout is over: it put everyone back
    on the previous content)."""
    rollout = _lock_latest(scope_id, version)
    if rollout.state != Rollout.PAUSED:
        raise _refuse(rollout, "resume")
    rollout.state = Rollout.ROLLING
    rollout.reason = reason
    rollout.wave_started_at = timezone.now()
    rollout.save()
    count_hits_from_now(rollout)
    _audit(rollout, AuditEntry.ROLLOUT_RESUMED, actor=actor, source_ip=source_ip, reason=reason)
    return rollout


def rollout_to_abort(scope_id: int, version: int | None = None) -> Rollout:
    """The rollout an operator's abort ends: the scope's latest, if it still splits the fleet
    (and is the rollout of `version`, when given). apps.configs.actions.abort_rollout does the
    rest."""
    rollout = get_latest_rollout(scope_id)
    if rollout is None:
        raise NoRollout()
    _insist_on(rollout, version)
    if rollout.state not in Rollout.SPLIT_STATES:
        raise _refuse(rollout, "abort")
    return rollout


# What the health gate decides (apps.rollouts.health judges) ---------------------------------


def _count_stop(state: str) -> None:
    metrics.instruments().rollouts_halted.labels(state).inc()


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
