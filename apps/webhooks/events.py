"""The controller's events, and `emit`, which writes them to the webhook outbox.

`emit` is called right beside the audit entry of the change it describes, in the same
transaction: the outbox rows (one per endpoint that wants the event) commit with the change or
not at all. So a rolled-back change sends nothing, and a change that committed is sent even if
the process dies the next instant: the delivery job (delivery.py) of any controller process
finds the rows. After the commit this process's delivery job is woken, so the common case goes
out at once rather than at the job's next period.
"""

import json
import uuid
from functools import partial

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from apps.ops.wake import run_soon
from apps.webhooks.delivery import DELIVERY_JOB
from apps.webhooks.models import Delivery, WebhookEndpoint

# Every event type, in the order docs/webhooks.md describes them.
EVENT_TYPES = (
    "config.published",
    "config.rolled_back",
    "rollout.started",
    "rollout.wave_started",
    "rollout.paused",
    "rollout.resumed",
    "rollout.completed",
    "rollout.halted",
    "rollout.aborted",
    "change_request.opened",
    "change_request.approved",
    "change_request.rejected",
    "agent.registered",
    "agent.revoked",
    # A change scheduled for a time (apps.changes.scheduling), decided: published at its time,
    # or not (stale, expired unapproved, cancelled, or refused at its time by a rollout).
    "scheduled_change.published",
    "scheduled_change.stale",
    "scheduled_change.expired",
    "scheduled_change.cancelled",
    "scheduled_change.failed",
    "webhook.test",
)
ALL_EVENTS = "*"
# What an endpoint may ask for: a test event goes to the endpoint it tests, whatever it asks.
SUBSCRIBABLE = tuple(event for event in EVENT_TYPES if event != "webhook.test")


def new_event(event_type: str, data: dict, scope: tuple[str, str] | None) -> dict:
    """An event in the one shape every webhook receives; `data` names its scope."""
    application, environment = scope or ("", "")
    return {
        "type": event_type,
        "id": f"msg_{uuid.uuid4().hex}",
        "timestamp": timezone.now().isoformat(),
        "data": {"application": application, "environment": environment, **data},
    }


def wants(endpoint: WebhookEndpoint, event_type: str, scope: tuple[str, str] | None) -> bool:
    application, environment = scope or ("", "")
    return (
        (ALL_EVENTS in endpoint.events or event_type in endpoint.events)
        and (not endpoint.applications or application in endpoint.applications)
        and (not endpoint.environments or environment in endpoint.environments)
    )


def enqueue(event: dict, endpoints) -> list[Delivery]:
    """Outbox rows of `event` for `endpoints`, in the caller's transaction; the delivery job of
    this process is woken once it commits."""
    body = json.dumps(event, cls=DjangoJSONEncoder, separators=(",", ":"))
    rows = Delivery.objects.bulk_create(
        Delivery(
            endpoint=endpoint,
            event_id=event["id"],
            event_type=event["type"],
            body=body,
            application=event["data"]["application"],
            environment=event["data"]["environment"],
            created_at=timezone.now(),
            next_attempt_at=timezone.now(),
        )
        for endpoint in endpoints
    )
    if rows:
        wake_after_commit()
    return rows


def wake_after_commit() -> None:
    """Run this process's delivery job once the caller's transaction has committed."""
    transaction.on_commit(partial(run_soon, DELIVERY_JOB))


def emit(event_type: str, data: dict, scope: tuple[str, str] | None = None) -> dict:
    """Tell every enabled endpoint that wants it of an event about `scope` ((application,
    environment) by name, as the audit log names it). Call it inside the transaction of the
    change, next to its audit entry. Returns the event."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    event = new_event(event_type, data, scope)
    endpoints = [
        endpoint
        for endpoint in WebhookEndpoint.objects.filter(enabled=True)
        if wants(endpoint, event_type, scope)
    ]
    enqueue(event, endpoints)
    return event
