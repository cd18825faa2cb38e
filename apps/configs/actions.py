"""Every way a configuration version is made: a publish (at once or by a rollout plan), an
emergency, an approved change request, a rollback, a rollout's abort and the health gate's halt.

A scheduled change is published at its time by the same path (publish_scheduled_change).

Each one is a call of `_make_version`: one transaction under the writers' lock that checks what
was asked against the newest version, lets the rollout in progress refuse the publish (or ends
it, for a rollback), makes the version, writes its audit entry, starts the plan's rollout, and
tells the agents after the commit. Whether an editor's change is published at once or waits for
approvers is decided before, by apps.changes.services.request_config_change.
"""

import logging
from dataclasses import dataclass
from functools import partial

from django.db import IntegrityError, transaction

from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from apps.changes.errors import EmergencyNeedsSuperuser
from apps.changes.models import ChangeRequest, ScheduledChange
from apps.configs.errors import BaseVersionGone, NoConfigYet, StaleVersion, UnknownVersion
from apps.configs.models import ConfigVersion
from apps.configs.services import announce_config, content_of, if_match_allows, lock_newest
from apps.rollouts.errors import NothingToRollOutFrom, RolloutConflict
from apps.rollouts.models import Rollout
from apps.rollouts.services import (
    end_split_rollout,
    refuse_publish_during_rollout,
    rollout_to_abort,
    start_rollout,
)
from apps.scopes.services import default_scope_id, policy_of, scope_names
from apps.webhooks.events import emit
from protocol.rules import check_config_url, check_pooling_interval

logger = logging.getLogger(__name__)

# Concurrent first creations race on the unique version; the loser retries once the winner
# committed. Later writers queue on a row lock and do not need the retry.
PUBLISH_ATTEMPTS = 5

# Why a publish that skipped approval was allowed to, as its audit entry states it.
ROLLBACK_BYPASS_RULE = (
    "a rollback (or a rollout's abort) restores content that was published before; an "
    "operator may restore it without approval, so that an incident does not wait for approvers"
)
HALT_BYPASS_RULE = (
    "the health gate halted a failing rollout and restored the previous content, which was "
    "published before"
)
EMERGENCY_RULE = "a superuser's emergency publish, with its reason"


@dataclass(frozen=True)
class Rollback:
    """A publish of an earlier version's content. It goes to every agent at once, so instead of
    being refused by the rollout still splitting the fleet it ends that rollout."""

    version: int
    reason: str = ""
    # An abort or a halt: the rollout of this version must still be the one splitting the fleet.
    rollout: int | None = None
    # The health gate's numbers: the rollout is halted rather than aborted.
    halt: dict | None = None


def _make_version(
    scope_id: int,
    config_url: str | None,
    pooling_interval: int | None,
    *,
    action: str,
    actor=None,
    source_ip: str | None = None,
    detail: dict | None = None,
    plan: dict | None = None,
    if_match: str | None = None,
    change: ChangeRequest | None = None,
    rollback: Rollback | None = None,
    update: bool = False,
) -> tuple[ConfigVersion, bool]:
    """Make the given content current in a scope. Returns (config, created); identical content
    is a no-op,
    and so is not audited. A field left as None keeps the current value: the merge happens under
    the lock, so two admins changing different fields at once both keep their change.

    `action` and `detail` are the audit entry's. `plan` gives the new version to the agents in
    waves instead of to all at once. `if_match` is the client's If-Match header: when it names a
    version other than the newest, nothing is stored and StaleVersion says which version is
    newest. `change`, an approved change request, must still be based on the newest version
    (else BaseVersionGone) and its author is the new version's creator; every other pending
    request becomes stale. `rollback` ends the rollout splitting the fleet instead of being
    refused by it. `update` refuses (NoConfigYet) to make a scope's first version."""
    if config_url is not None:
        config_url = check_config_url(config_url)
    if pooling_interval is not None:
        pooling_interval = check_pooling_interval(pooling_interval)
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            with transaction.atomic():
                newest = lock_newest(scope_id)
                if newest is None and (update or config_url is None or pooling_interval is None):
                    raise NoConfigYet()
                current_version = newest.version if newest else 0
                if change is not None and change.base_version != current_version:
                    raise BaseVersionGone(current_version)
                if if_match is not None and not if_match_allows(if_match, current_version):
                    raise StaleVersion(current_version)
                if plan is not None and newest is None:
                    raise NothingToRollOutFrom()
                if rollback is None:
                    refuse_publish_during_rollout(newest)
                else:
                    end_split_rollout(
                        newest,
                        actor=actor,
                        source_ip=source_ip,
                        reason=rollback.reason,
                        expect_version=rollback.rollout,
                        halt=rollback.halt,
                    )
                url = newest.config_url if config_url is None else config_url
                interval = newest.pooling_interval if pooling_interval is None else pooling_interval
                if newest is not None and newest.same_content(url, interval):
                    return newest, False
                config = ConfigVersion.objects.create(
                    scope_id=scope_id,
                    version=current_version + 1,
                    config_url=url,
                    pooling_interval=interval,
                    created_by=change.author if change else actor,
                    rolled_back_from=rollback.version if rollback else None,
                )
                audited = {"before": content_of(newest), "after": content_of(config)}
                made_stale = ChangeRequest.objects.make_stale(scope_id, config.version, keep=change)
                if made_stale:
                    audited["made_stale"] = made_stale
                scope = scope_names(scope_id)
                entry = record_event(
                    action,
                    actor=actor,
                    source_ip=source_ip,
                    target=f"config v{config.version}",
                    scope=scope,
                    detail={**audited, **(detail or {})},
                )
                emit(*_event_of(config, newest, entry, change, rollback), scope)
                if plan is not None:
                    start_rollout(config, newest, plan, actor=actor, source_ip=source_ip)
                transaction.on_commit(partial(announce_config, config, rollout=plan is not None))
                return config, True
        except IntegrityError:
            if attempt == PUBLISH_ATTEMPTS:
                raise
            logger.info("version race on attempt %s, retrying", attempt)
    raise AssertionError("unreachable")


def _event_of(config, newest, entry, change, rollback) -> tuple[str, dict]:
    """The webhook event of a new version: its content and the one it replaced, who made it
    and how (the audit action: created, updated, emergency, rolled back)."""
    data = {
        "version": config.version,
        "previous": content_of(newest),
        "content": content_of(config),
        "actor": entry.actor,
        "action": entry.action,
        "change_request": change.pk if change else None,
    }
    if rollback is None:
        return "config.published", data
    return "config.rolled_back", {**data, "rolled_back_to": rollback.version}


def publish_config(
    *,
    scope_id: int | None = None,
    config_url: str | None = None,
    pooling_interval: int | None = None,
    rollout: dict | None = None,
    actor=None,
    source_ip: str | None = None,
    if_match: str | None = None,
) -> tuple[ConfigVersion, bool]:
    """Publish the given content (a field left as None keeps its value) in a scope (the default
    scope when None), to every agent at once or by the `rollout` plan; refused while a rollout
    is rolling or paused."""
    return _make_version(
        scope_id or default_scope_id(),
        config_url,
        pooling_interval,
        action=AuditEntry.CONFIG_CREATED,
        actor=actor,
        source_ip=source_ip,
        plan=rollout,
        if_match=if_match,
    )


def update_config(
    *,
    scope_id: int | None = None,
    actor=None,
    source_ip: str | None = None,
    if_match: str | None = None,
    rollout: dict | None = None,
    **changes,
) -> tuple[ConfigVersion, bool]:
    """Change some fields of the current config of a scope (the default scope when None); a
    field left out keeps its value."""
    return _make_version(
        scope_id or default_scope_id(),
        changes.get("config_url"),
        changes.get("pooling_interval"),
        action=AuditEntry.CONFIG_UPDATED,
        actor=actor,
        source_ip=source_ip,
        plan=rollout,
        if_match=if_match,
        update=True,
    )


def current_policy(scope_id: int | None = None):
    """The rules of a scope's environment (an Environment; the default scope's when None): how
    many approvers must say yes (0: editors publish directly), and the rollout plan of a change
    naming none."""
    return policy_of(scope_id or default_scope_id())


def approvals_required(scope_id: int | None = None) -> int:
    return current_policy(scope_id).approvals_required


def approval_bypass(rule: str, scope_id: int) -> dict | None:
    """The audit detail of a publish that skipped approval while the scope's environment
    requires approvals (None while it does not: nothing was skipped)."""
    required = approvals_required(scope_id)
    if not required:
        return None
    return {"approval_bypassed": {"approvals_required": required, "rule": rule}}


def publish_emergency(
    *,
    scope_id: int | None = None,
    actor,
    reason: str,
    source_ip: str | None = None,
    partial: bool = False,
    config_url: str | None = None,
    pooling_interval: int | None = None,
) -> tuple[ConfigVersion, bool]:
    """A superuser publishes at once, whatever the approvals setting; audited as an emergency
    with its reason. Pending requests become stale like after any publish."""
    if not (actor is not None and actor.is_active and actor.is_superuser):
        raise EmergencyNeedsSuperuser()
    scope_id = scope_id or default_scope_id()
    if partial and not ConfigVersion.objects.filter(scope_id=scope_id).exists():
        raise NoConfigYet()
    config, created = _make_version(
        scope_id,
        config_url,
        pooling_interval,
        action=AuditEntry.CONFIG_EMERGENCY,
        actor=actor,
        source_ip=source_ip,
        detail={"reason": reason, **(approval_bypass(EMERGENCY_RULE, scope_id) or {})},
    )
    if created:
        logger.warning("emergency publish of version %s by %s: %s", config.version, actor, reason)
    return config, created


def publish_change_request(
    change: ChangeRequest, *, approver, source_ip: str | None = None, detail: dict | None = None
) -> ConfigVersion:
    """The last approval of `change` publishes its content (with its rollout plan), in the
    approval's transaction (or, for a scheduled one, the job's at its time, with no approver);
    BaseVersionGone when a newer version was published meanwhile."""
    config, _ = _make_version(
        change.scope_id,
        change.config_url,
        change.pooling_interval,
        action=AuditEntry.CONFIG_UPDATED if change.base_version else AuditEntry.CONFIG_CREATED,
        actor=approver,
        source_ip=source_ip,
        plan=change.rollout,
        change=change,
        detail={
            "change_request": change.pk,
            "author": change.author.email if change.author else None,
            "approvers": [
                a.approver.email if a.approver else None
                for a in change.approvals.select_related("approver")
            ],
            **(detail or {}),
        },
    )
    return config


def publish_scheduled_change(scheduled: ScheduledChange) -> ConfigVersion:
    """A scheduled change at its time: its content with its plan, through its approved change
    request when it has one, else as its author's publish. Its base version must still be the
    newest (BaseVersionGone, StaleVersion otherwise), and a rollout in progress refuses it as it
    refuses any publish."""
    detail = {"scheduled_change": scheduled.pk, "publish_at": scheduled.publish_at.isoformat()}
    if scheduled.change_request is not None:
        return publish_change_request(scheduled.change_request, approver=None, detail=detail)
    config, _ = _make_version(
        scheduled.scope_id,
        scheduled.config_url,
        scheduled.pooling_interval,
        action=AuditEntry.CONFIG_UPDATED if scheduled.base_version else AuditEntry.CONFIG_CREATED,
        actor=scheduled.author,
        plan=scheduled.rollout,
        # The base version, checked as a client's If-Match is.
        if_match=f'"{scheduled.base_version}"',
        detail=detail,
    )
    return config


def _roll_back(
    rollback: Rollback, scope_id: int, *, actor=None, source_ip=None
) -> tuple[ConfigVersion, bool]:
    target = ConfigVersion.objects.filter(scope_id=scope_id, version=rollback.version).first()
    if target is None:
        raise UnknownVersion(rollback.version)
    rule = ROLLBACK_BYPASS_RULE if actor is not None else HALT_BYPASS_RULE
    return _make_version(
        scope_id,
        target.config_url,
        target.pooling_interval,
        action=AuditEntry.CONFIG_ROLLED_BACK,
        actor=actor,
        source_ip=source_ip,
        detail=approval_bypass(rule, scope_id),
        rollback=rollback,
    )


def rollback_config(
    *, version: int, scope_id: int | None = None, actor=None, source_ip: str | None = None
) -> tuple[ConfigVersion, bool]:
    """Make a new version whose content is that of `version`, for every agent at once; a
    rollout still splitting the fleet is aborted.

    While approvals are required (CONFIG_APPROVALS_REQUIRED), a rollback still publishes at
    once: it puts back content that was published before, and in an incident that must not
    wait for approvers. Its audit entry says so (`approval_bypassed`, with the rule), and the
    change requests' list in the admin shows it."""
    return _roll_back(
        Rollback(version), scope_id or default_scope_id(), actor=actor, source_ip=source_ip
    )


def abort_rollout(
    *,
    scope_id: int | None = None,
    actor=None,
    source_ip=None,
    reason: str = "",
    version: int | None = None,
) -> Rollout:
    """Put every agent back on the previous version's content at once. Workers refuse older
    versions, so this publishes a new version carrying the previous content, as a rollback
    does; the history shows it as a rollback and the audit log as the rollout's abort."""
    rollout = rollout_to_abort(scope_id or default_scope_id(), version)
    _roll_back(
        Rollback(rollout.previous_version, reason=reason or "aborted", rollout=rollout.version),
        rollout.scope_id,
        actor=actor,
        source_ip=source_ip,
    )
    rollout.refresh_from_db()
    return rollout


def halt_rollout(rollout: Rollout, detail: dict) -> Rollout | None:
    """Halt the rollout and put every agent back on the previous version's content at once: a
    rollback, as an abort is, that insists this rollout is still the one splitting the fleet.
    Of several processes deciding at once, the first to take the writers' lock halts it; the
    others find it ended and get None. `detail` (the numbers, with the `reason`) is audited."""
    try:
        config, _ = _roll_back(
            Rollback(
                rollout.previous_version,
                reason=detail["reason"],
                rollout=rollout.version,
                halt=detail,
            ),
            rollout.scope_id,
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
