"""How an editor's change reaches the agents: `request_config_change`, which the API and the
admin both call, publishes it at once (to everyone, or by a rollout plan), publishes a
superuser's emergency, or opens a change request while approvals are required; and the change
requests' approving, rejecting and cancelling. The versions themselves are made by
apps.configs.actions, under the same lock as every other writer. Changes scheduled for a time
are apps.changes.scheduling's; what they share with change requests is here (a change decided
against the current version, its plan, where an outcome is told)."""

import logging
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from apps.changes.errors import (
    AlreadyApproved,
    ChangeIsStale,
    ChangeNotPending,
    NotYourDecision,
    UnknownChange,
)
from apps.changes.models import Approval, ChangeRequest, ScheduledChange
from apps.configs.actions import (
    approvals_required,
    current_policy,
    publish_change_request,
    publish_config,
    publish_emergency,
    update_config,
)
from apps.configs.errors import BaseVersionGone, NoConfigYet, StaleVersion
from apps.configs.models import ConfigVersion
from apps.configs.preflight import preflight_before_publish
from apps.configs.services import (
    CONTENT_FIELDS,
    content_of,
    get_current_config,
    if_match_allows,
    lock_newest,
)
from apps.rollouts.errors import NothingToRollOutFrom, RolloutPlanNeedsDirectPublish
from apps.scopes.services import default_scope_id, scope_names
from apps.webhooks.events import emit
from protocol.rules import check_config_url, check_pooling_interval

logger = logging.getLogger(__name__)

FIELDS = CONTENT_FIELDS


@dataclass(frozen=True)
class ConfigChange:
    """What request_config_change did: opened `change_request` (approvals are required, nothing
    is published yet), or left `config` current, `created` when this call made it."""

    config: ConfigVersion | None = None
    created: bool = False
    change_request: ChangeRequest | None = None


def request_config_change(
    actor,
    values: dict,
    *,
    scope_id: int | None = None,
    partial: bool = False,
    plan: dict | None = None,
    emergency: bool = False,
    reason: str = "",
    if_match: str | None = None,
    source_ip: str | None = None,
) -> ConfigChange:
    """An editor's change of the configuration (`values`: config_url and pooling_interval, or
    some of them when `partial`, which needs a current version). A superuser's `emergency`
    publishes at once with its `reason`, whatever the approvals setting; while approvals are
    required a change request opens, carrying the rollout plan its version will be published
    with; otherwise it is published now, to every agent at once or by `plan`. A plan asking for
    a pre-flight runs it first, and nothing is stored when it fails. All of it in one scope (the
    default scope when None), by the rules of its environment."""
    if plan is not None and emergency:
        raise RolloutPlanNeedsDirectPublish()
    scope_id = scope_id or default_scope_id()
    policy = current_policy(scope_id)
    if not emergency:
        plan = plan_of_change(scope_id, plan, policy)
    if plan is not None and plan.get("preflight"):
        config_url = values.get("config_url")
        preflight_before_publish(
            None if config_url is None else check_config_url(config_url),
            scope_id=scope_id,
            actor=actor,
            source_ip=source_ip,
        )
    if emergency:
        config, created = publish_emergency(
            scope_id=scope_id,
            actor=actor,
            reason=reason,
            source_ip=source_ip,
            partial=partial,
            **values,
        )
        return ConfigChange(config, created)
    if policy.approvals_required:
        change = propose_change(
            scope_id=scope_id,
            author=actor,
            source_ip=source_ip,
            partial=partial,
            rollout=plan,
            if_match=if_match,
            **values,
        )
        if change is None:
            return ConfigChange(get_current_config(scope_id))
        return ConfigChange(change_request=change)
    publish = update_config if partial else publish_config
    config, created = publish(
        scope_id=scope_id,
        actor=actor,
        source_ip=source_ip,
        if_match=if_match,
        rollout=plan,
        **values,
    )
    return ConfigChange(config, created)


def plan_of_change(scope_id: int, plan: dict | None, policy=None) -> dict | None:
    """The rollout plan a change (not an emergency) is published with: its own, else its
    environment's default (from `policy`, the scope's policy when the caller has read it
    already); the first version has nothing to roll out from, and an emergency goes to everyone
    at once."""
    default = (policy or current_policy(scope_id)).default_rollout
    if plan is None and default is not None:
        return default if get_current_config(scope_id) is not None else None
    return plan


def content_of_change(change: ChangeRequest) -> dict:
    return {
        "base_version": change.base_version,
        "config_url": change.config_url,
        "pooling_interval": change.pooling_interval,
        "rollout": change.rollout,
    }


def propose_change(
    *,
    scope_id: int | None = None,
    author,
    source_ip: str | None = None,
    partial: bool = False,
    config_url: str | None = None,
    pooling_interval: int | None = None,
    rollout: dict | None = None,
    if_match: str | None = None,
) -> ChangeRequest | None:
    """Record a proposed configuration of a scope (the default scope when None), based on its
    current version, for approvers to decide.
    A field left as None keeps the current value; `partial` (a PUT) needs a current version.
    Returns None when the proposal equals the current configuration: nothing to decide."""
    with transaction.atomic():
        # Under the writers' lock, so a publish cannot slip between reading the base version
        # and storing the request (it would not see this request to make it stale).
        scope_id = scope_id or default_scope_id()
        proposal = merge_with_current(
            scope_id,
            config_url,
            pooling_interval,
            partial=partial,
            rollout=rollout,
            if_match=if_match,
        )
        if proposal is None:
            return None
        newest, url, interval = proposal
        change = ChangeRequest.objects.create(
            scope_id=scope_id,
            base_version=newest.version if newest else 0,
            config_url=url,
            pooling_interval=interval,
            rollout=rollout,
            author=author,
        )
        scope = scope_names(change.scope_id)
        detail = {"current": content_of(newest), "proposed": content_of_change(change)}
        entry = record_event(
            AuditEntry.CHANGE_PROPOSED,
            actor=author,
            source_ip=source_ip,
            target=str(change),
            scope=scope,
            detail=detail,
        )
        emit(
            "change_request.opened",
            {"change_request": change.pk, "author": entry.actor, "rollout": rollout, **detail},
            scope,
        )
    logger.info("change request %s proposed by %s", change.pk, author)
    return change


def merge_with_current(
    scope_id: int,
    config_url: str | None,
    pooling_interval: int | None,
    *,
    partial: bool,
    rollout: dict | None,
    if_match: str | None,
) -> tuple[ConfigVersion | None, str, int] | None:
    """A change that waits (a change request, a scheduled change) decided against a scope's
    newest version, taken under the writers' lock (the caller's transaction holds it): (that
    version or None, the whole content, a field left as None filled in from it). None when the
    content equals the current one: nothing to wait for. Refused as a publish would be: a PUT
    without a version, a stale If-Match, a plan with nothing to roll out from."""
    if config_url is not None:
        config_url = check_config_url(config_url)
    if pooling_interval is not None:
        pooling_interval = check_pooling_interval(pooling_interval)
    newest = lock_newest(scope_id)
    if newest is None and (partial or config_url is None or pooling_interval is None):
        raise NoConfigYet()
    current = newest.version if newest else 0
    if if_match is not None and not if_match_allows(if_match, current):
        raise StaleVersion(current)
    if rollout is not None and newest is None:
        raise NothingToRollOutFrom()
    url = newest.config_url if config_url is None else config_url
    interval = newest.pooling_interval if pooling_interval is None else pooling_interval
    if newest is not None and newest.same_content(url, interval):
        return None
    return newest, url, interval


def scheduled_change_decided(scheduled: ScheduledChange) -> None:
    """The one place a scheduled change's outcome (published, stale, expired, cancelled or
    failed) is told beyond the audit log, called in the transaction that decided it, beside its
    audit entry: what must leave with the decision, or not at all, is written here (the
    webhooks' `scheduled_change.<state>` event)."""
    logger.info("%s of %s is %s", scheduled, scheduled.scope_id, scheduled.state)
    decided_by = scheduled.decided_by
    data = {
        "scheduled_change": scheduled.pk,
        "state": scheduled.state,
        "publish_at": scheduled.publish_at.isoformat(),
        "base_version": scheduled.base_version,
        "content": {
            "config_url": scheduled.config_url,
            "pooling_interval": scheduled.pooling_interval,
        },
        "change_request": scheduled.change_request_id,
        "published_version": scheduled.published_version,
        "reason": scheduled.reason,
        "decided_by": decided_by.email if decided_by is not None else "system",
    }
    emit(f"scheduled_change.{scheduled.state}", data, scope_names(scheduled.scope_id))


def _locked_pending(change_id, scope_id: int | None) -> ChangeRequest:
    """The request of a scope (the default scope when None), locked until the transaction
    ends, if it still waits for a decision."""
    change = (
        ChangeRequest.objects.select_for_update()
        .filter(pk=change_id, scope_id=scope_id or default_scope_id())
        .first()
    )
    if change is None:
        raise UnknownChange(change_id)
    if change.state != ChangeRequest.PENDING:
        raise ChangeNotPending(change)
    return change


def _make_stale(change_id, current_version: int, *, actor, source_ip: str | None) -> None:
    """A request found stale when someone acted on it: recorded in a transaction of its own,
    since the one that found it is rolled back."""
    with transaction.atomic():
        updated = ChangeRequest.objects.filter(pk=change_id, state=ChangeRequest.PENDING).update(
            state=ChangeRequest.STALE, decided_at=timezone.now()
        )
        if updated:
            record_event(
                AuditEntry.CHANGE_STALE,
                actor=actor,
                source_ip=source_ip,
                target=f"change request #{change_id}",
                detail={"current_version": current_version},
                scope=scope_names(ChangeRequest.objects.get(pk=change_id).scope_id),
            )


def approve_change(
    change_id,
    *,
    scope_id: int | None = None,
    approver,
    comment: str = "",
    source_ip: str | None = None,
) -> ChangeRequest:
    """One approver's yes. When the approvals reach CONFIG_APPROVALS_REQUIRED the proposed
    content is published (with its rollout plan) in the same transaction as the approval."""
    try:
        with transaction.atomic():
            change = _locked_pending(change_id, scope_id)
            if change.author_id is not None and change.author_id == approver.pk:
                raise NotYourDecision("Nobody approves their own change request.")
            if change.approvals.filter(approver=approver).exists():
                raise AlreadyApproved(change)
            newest = lock_newest(change.scope_id)
            current = newest.version if newest else 0
            if current != change.base_version:
                raise ChangeIsStale(change, current)
            Approval.objects.create(change_request=change, approver=approver, comment=comment)
            scope = scope_names(change.scope_id)
            detail = {"comment": comment, "approvals": change.approvals.count()}
            entry = record_event(
                AuditEntry.CHANGE_APPROVED,
                actor=approver,
                source_ip=source_ip,
                target=str(change),
                scope=scope,
                detail=detail,
            )
            required = approvals_required(change.scope_id)
            emit(
                "change_request.approved",
                {
                    "change_request": change.pk,
                    "approver": entry.actor,
                    "approvals_required": required,
                    **detail,
                },
                scope,
            )
            if detail["approvals"] >= required:
                if hasattr(change, "schedule"):
                    # Published at its time by the scheduled changes' job, not now.
                    change.state = ChangeRequest.APPROVED
                    change.decided_by = approver
                    change.decided_at = timezone.now()
                    change.save(update_fields=["state", "decided_by", "decided_at"])
                else:
                    _publish(change, approver=approver, source_ip=source_ip)
    except (ChangeIsStale, BaseVersionGone) as exc:
        _make_stale(change_id, exc.current_version, actor=approver, source_ip=source_ip)
        if isinstance(exc, BaseVersionGone):
            raise ChangeIsStale(change, exc.current_version) from None
        raise
    return change


def _publish(change: ChangeRequest, *, approver, source_ip: str | None) -> ConfigVersion:
    config = publish_change_request(change, approver=approver, source_ip=source_ip)
    change.state = ChangeRequest.PUBLISHED
    change.published_version = config.version
    change.decided_by = approver
    change.decided_at = timezone.now()
    change.save(update_fields=["state", "published_version", "decided_by", "decided_at"])
    logger.info("change request %s published as version %s", change.pk, config.version)
    return config


def reject_change(
    change_id,
    *,
    scope_id: int | None = None,
    approver,
    comment: str = "",
    source_ip: str | None = None,
) -> ChangeRequest:
    with transaction.atomic():
        change = _locked_pending(change_id, scope_id)
        if change.author_id is not None and change.author_id == approver.pk:
            raise NotYourDecision("Nobody rejects their own change request; cancel it instead.")
        _close(change, ChangeRequest.REJECTED, by=approver, comment=comment, source_ip=source_ip)
    return change


def cancel_change(
    change_id,
    *,
    scope_id: int | None = None,
    actor,
    comment: str = "",
    source_ip: str | None = None,
) -> ChangeRequest:
    """The author withdraws a request (a superuser may withdraw anyone's)."""
    with transaction.atomic():
        change = _locked_pending(change_id, scope_id)
        if change.author_id != actor.pk and not actor.is_superuser:
            raise NotYourDecision("Only the author cancels a change request.")
        _close(change, ChangeRequest.CANCELLED, by=actor, comment=comment, source_ip=source_ip)
    return change


_CLOSING_ACTIONS = {
    ChangeRequest.REJECTED: AuditEntry.CHANGE_REJECTED,
    ChangeRequest.CANCELLED: AuditEntry.CHANGE_CANCELLED,
}


def _close(change: ChangeRequest, state: str, *, by, comment: str, source_ip: str | None) -> None:
    """Reject or cancel: the request is decided without a publish, and audited."""
    change.state = state
    change.decided_by = by
    change.decided_at = timezone.now()
    change.decision_comment = comment
    change.save(update_fields=["state", "decided_by", "decided_at", "decision_comment"])
    scope = scope_names(change.scope_id)
    entry = record_event(
        _CLOSING_ACTIONS[state],
        actor=by,
        source_ip=source_ip,
        target=str(change),
        scope=scope,
        detail={"comment": comment},
    )
    if state == ChangeRequest.REJECTED:
        data = {"change_request": change.pk, "approver": entry.actor, "comment": comment}
        emit("change_request.rejected", data, scope)
    scheduled = (
        ScheduledChange.objects.select_for_update()
        .filter(change_request=change, state=ScheduledChange.SCHEDULED)
        .first()
    )
    if scheduled is not None:
        # Its request is decided against: nothing will be published at its time.
        scheduled.state = ScheduledChange.CANCELLED
        scheduled.decided_by = by
        scheduled.decided_at = change.decided_at
        scheduled.reason = f"its change request was {state}"
        scheduled.save(update_fields=["state", "decided_by", "decided_at", "reason"])
        scheduled_change_decided(scheduled)


def recent_bypasses(limit: int = 20):
    """The latest publishes that skipped approval while it was required (rollbacks, aborts,
    halts and emergencies), newest first, for the change requests' list."""
    return AuditEntry.objects.filter(detail__has_key="approval_bypassed")[:limit]


def diff_against_current(change: ChangeRequest) -> tuple[int, list[dict]]:
    """(current version of the request's scope, the fields whose proposed value differs from
    the current one)."""
    current = ConfigVersion.objects.filter(scope_id=change.scope_id).order_by("-version").first()
    rows = [
        {
            "field": field,
            "current": getattr(current, field) if current else None,
            "proposed": getattr(change, field),
        }
        for field in FIELDS
        if current is None or getattr(current, field) != getattr(change, field)
    ]
    return (current.version if current else 0), rows
