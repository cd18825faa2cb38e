"""Changes scheduled for a time: `schedule_config_change` stores one (with a change request for
approvers in a scope needing approvals), `cancel_scheduled_change` withdraws it, and
`publish_due_changes`, a periodic job of every controller process (apps/ops/jobs.py), publishes
each when its time comes, through the same action as any publish (apps.configs.actions).

Each scheduled change is decided once: the job takes its row (and its change request's) under a
lock that other processes skip, and changes its state in the transaction that publishes it or
finds it stale or expired. The rows are the schedule, so a restarted controller carries on.
"""

import logging
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from apps.accounts.roles import OPERATOR, has_role
from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from apps.changes.errors import (
    NotYourScheduledChange,
    ScheduledChangeDecided,
    UnknownScheduledChange,
)
from apps.changes.models import ChangeRequest, ScheduledChange
from apps.changes.services import (
    merge_with_current,
    plan_of_change,
    propose_change,
    scheduled_change_decided,
)
from apps.configs.actions import approvals_required, publish_scheduled_change
from apps.configs.errors import BaseVersionGone, StaleVersion
from apps.scopes.services import default_scope_id, scope_names
from controller_site.errors import ServiceError

logger = logging.getLogger(__name__)


def schedule_config_change(
    actor,
    values: dict,
    *,
    publish_at: datetime,
    scope_id: int | None = None,
    partial: bool = False,
    plan: dict | None = None,
    if_match: str | None = None,
    source_ip: str | None = None,
) -> ScheduledChange | None:
    """An editor's change (`values` as for request_config_change) to publish at `publish_at`,
    decided now against the current version, which must still be current then. In a scope
    needing approvals a change request opens with it, to be approved before that time. None
    when the content equals the current one: nothing to schedule."""
    scope_id = scope_id or default_scope_id()
    plan = plan_of_change(scope_id, plan)
    with transaction.atomic():
        if approvals_required(scope_id):
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
                return None
            base, url, interval = change.base_version, change.config_url, change.pooling_interval
        else:
            change = None
            proposal = merge_with_current(
                scope_id,
                values.get("config_url"),
                values.get("pooling_interval"),
                partial=partial,
                rollout=plan,
                if_match=if_match,
            )
            if proposal is None:
                return None
            newest, url, interval = proposal
            base = newest.version if newest else 0
        scheduled = ScheduledChange.objects.create(
            scope_id=scope_id,
            publish_at=publish_at,
            base_version=base,
            config_url=url,
            pooling_interval=interval,
            rollout=plan,
            author=actor,
            change_request=change,
        )
        record_event(
            AuditEntry.SCHEDULED_CREATED,
            actor=actor,
            source_ip=source_ip,
            target=str(scheduled),
            scope=scope_names(scope_id),
            detail={
                "publish_at": publish_at.isoformat(),
                "base_version": base,
                "config_url": url,
                "pooling_interval": interval,
                "rollout": plan,
                "change_request": change.pk if change else None,
            },
        )
    logger.info("%s by %s for %s", scheduled, actor, publish_at.isoformat())
    return scheduled


def _locked(scheduled_id, change_request_id, *, skip_locked: bool):
    """The scheduled change and its change request, both locked: the request first, as
    approving, rejecting and cancelling it lock it, so that nobody waits on the other in a
    circle. None when another process holds either (with `skip_locked`)."""
    change = None
    if change_request_id is not None:
        requests = ChangeRequest.objects.select_for_update(skip_locked=skip_locked)
        change = requests.filter(pk=change_request_id).first()
        if change is None:
            return None
    scheduled = (
        ScheduledChange.objects.select_for_update(skip_locked=skip_locked)
        .filter(pk=scheduled_id)
        .first()
    )
    if scheduled is not None and change is not None:
        scheduled.change_request = change
    return scheduled


def _decide(scheduled: ScheduledChange, state: str, action: str, *, actor=None, **detail) -> None:
    """Record the outcome of a scheduled change that published nothing, audited."""
    scheduled.state = state
    scheduled.decided_at = timezone.now()
    scheduled.decided_by = actor
    scheduled.reason = detail.pop("reason", "")
    scheduled.save(update_fields=["state", "decided_at", "decided_by", "reason"])
    record_event(
        action,
        actor=actor,
        source_ip=detail.pop("source_ip", None),
        target=str(scheduled),
        scope=scope_names(scheduled.scope_id),
        detail={"reason": scheduled.reason, **detail},
    )
    scheduled_change_decided(scheduled)


def _close_request(change: ChangeRequest | None, state: str, *, by=None, comment: str = ""):
    if change is not None and change.state in (ChangeRequest.PENDING, ChangeRequest.APPROVED):
        change.state = state
        change.decided_by = by
        change.decided_at = timezone.now()
        change.decision_comment = comment
        change.save(update_fields=["state", "decided_by", "decided_at", "decision_comment"])


def cancel_scheduled_change(
    scheduled_id,
    *,
    scope_id: int | None = None,
    actor,
    comment: str = "",
    source_ip: str | None = None,
) -> ScheduledChange:
    """Its author, or an operator of its scope, withdraws a scheduled change of a scope (the
    default scope when None) before its time; its change request, if any, is cancelled too."""
    found = (
        ScheduledChange.objects.filter(pk=scheduled_id, scope_id=scope_id or default_scope_id())
        .values_list("change_request_id")
        .first()
    )
    if found is None:
        raise UnknownScheduledChange(scheduled_id)
    with transaction.atomic():
        scheduled = _locked(scheduled_id, found[0], skip_locked=False)
        if scheduled.state != ScheduledChange.SCHEDULED:
            raise ScheduledChangeDecided(scheduled)
        own = scheduled.author_id is not None and scheduled.author_id == actor.pk
        if not own and not has_role(actor, OPERATOR, scheduled.scope):
            raise NotYourScheduledChange()
        _close_request(scheduled.change_request, ChangeRequest.CANCELLED, by=actor, comment=comment)
        _decide(
            scheduled,
            ScheduledChange.CANCELLED,
            AuditEntry.SCHEDULED_CANCELLED,
            actor=actor,
            reason=comment,
            source_ip=source_ip,
        )
    return scheduled


def publish_due_changes(now=None) -> list[ScheduledChange]:
    """The job's step: decide every scheduled change whose time has come (see
    publish_due_change). Returns those this call decided."""
    due = ScheduledChange.objects.filter(
        state=ScheduledChange.SCHEDULED, publish_at__lte=now or timezone.now()
    ).values_list("pk", "change_request_id")
    return [
        scheduled
        for pk, change_request_id in list(due)
        if (scheduled := publish_due_change(pk, change_request_id)) is not None
    ]


def publish_due_change(pk: int, change_request_id: int | None) -> ScheduledChange | None:
    """Publish one scheduled change at its time, if it still waits: through its change request
    when approved (expired while still pending), as its author's publish otherwise; stale
    instead when its base version is no longer current, failed when a rollout in progress
    refuses it. The process that takes the rows' lock decides; the others skip them. Returns
    the scheduled change when this call decided it."""
    with transaction.atomic():
        scheduled = _locked(pk, change_request_id, skip_locked=True)
        if scheduled is None or scheduled.state != ScheduledChange.SCHEDULED:
            return None
        change = scheduled.change_request
        if change is not None and change.state == ChangeRequest.PENDING:
            _close_request(change, ChangeRequest.EXPIRED)
            _decide(
                scheduled,
                ScheduledChange.EXPIRED,
                AuditEntry.SCHEDULED_EXPIRED,
                reason="its change request was not approved before its time",
                change_request=change.pk,
                approvals=change.approvals.count(),
                approvals_required=approvals_required(scheduled.scope_id),
            )
            return scheduled
        if change is not None and change.state != ChangeRequest.APPROVED:
            # Made stale by a publish since (rejected and cancelled ones cancel it at once).
            _stale(
                scheduled,
                f"its base version {scheduled.base_version} is no longer current: its change "
                f"request is {change.state}",
            )
            return scheduled
        try:
            config = publish_scheduled_change(scheduled)
        except (BaseVersionGone, StaleVersion) as exc:
            _close_request(change, ChangeRequest.STALE)
            _stale(
                scheduled,
                f"its base version {scheduled.base_version} is no longer current: the current "
                f"version is {exc.current_version}",
                current_version=exc.current_version,
            )
            return scheduled
        except ServiceError as exc:
            # Its request is closed with it, rather than left approved for a time that is gone.
            _close_request(change, ChangeRequest.CANCELLED, comment=exc.detail)
            _decide(
                scheduled, ScheduledChange.FAILED, AuditEntry.SCHEDULED_FAILED, reason=exc.detail
            )
            return scheduled
        scheduled.state = ScheduledChange.PUBLISHED
        scheduled.published_version = config.version
        scheduled.decided_at = timezone.now()
        scheduled.save(update_fields=["state", "published_version", "decided_at"])
        if change is not None:
            change.state = ChangeRequest.PUBLISHED
            change.published_version = config.version
            change.save(update_fields=["state", "published_version"])
        scheduled_change_decided(scheduled)
    logger.info("%s published as version %s", scheduled, config.version)
    return scheduled


def _stale(scheduled: ScheduledChange, reason: str, **detail) -> None:
    _decide(
        scheduled,
        ScheduledChange.STALE,
        AuditEntry.SCHEDULED_STALE,
        reason=reason,
        base_version=scheduled.base_version,
        **detail,
    )
