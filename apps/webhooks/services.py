"""Webhook endpoints: made, changed, deleted and given a new secret by an operator (each
audited in its transaction), sent a test event, and a delivery sent again. The same functions
serve the API and the admin."""

import hashlib
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from apps.audit.models import AuditEntry
from apps.audit.services import actor_label, record_event
from apps.webhooks.delivery import refused_address
from apps.webhooks.errors import RefusedWebhookURL, UnknownWebhook
from apps.webhooks.events import enqueue, new_event, wake_after_commit
from apps.webhooks.models import Delivery, WebhookEndpoint, shown_url
from apps.webhooks.signing import new_secret

# After a rotation the old secret signs too, for this long: receivers switch within it.
PREVIOUS_SECRET_GRACE = timedelta(hours=24)
# What an endpoint's audit entries keep of it (never its secret).
AUDITED_FIELDS = ("url", "events", "applications", "environments", "enabled", "description")


def check_url(url: str) -> str:
    """`url`, unless it leads to a private address while WEBHOOKS_BLOCK_PRIVATE_URLS is on."""
    refused = refused_address(url)
    if refused:
        raise RefusedWebhookURL(f"Refused: {refused}. Use a public address.")
    return url


def get_endpoint(pk) -> WebhookEndpoint:
    try:
        return WebhookEndpoint.objects.get(pk=pk)
    except (WebhookEndpoint.DoesNotExist, ValueError):
        raise UnknownWebhook(pk) from None


def _audited(endpoint: WebhookEndpoint) -> dict:
    fields = {field: getattr(endpoint, field) for field in AUDITED_FIELDS}
    # The URL with a hash of the whole, so that a change of its hidden part still shows.
    fields["url"] = f"{shown_url(endpoint.url)} (sha256 {_digest(endpoint.url)})"
    return fields


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def create_endpoint(
    *, actor=None, source_ip: str | None = None, **fields
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint with a new secret: (endpoint, secret). The secret is not shown again."""
    check_url(fields["url"])
    secret = new_secret()
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.create(secret=secret, created_by=actor, **fields)
        record_event(
            AuditEntry.WEBHOOK_CREATED,
            actor=actor,
            source_ip=source_ip,
            target=str(endpoint),
            detail=_audited(endpoint),
        )
    return endpoint, secret


def change_endpoint(
    endpoint: WebhookEndpoint, *, actor=None, source_ip: str | None = None, **changes
) -> WebhookEndpoint:
    """Change some fields. Enabling an endpoint again clears why it was disabled and its
    failure streak: its next failure starts a new three days."""
    if "url" in changes:
        check_url(changes["url"])
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        before = _audited(endpoint)
        for field, value in changes.items():
            setattr(endpoint, field, value)
        if changes.get("enabled"):
            endpoint.disabled_reason = ""
            endpoint.failing_since = None
        endpoint.save()
        after = _audited(endpoint)
        if after != before:
            record_event(
                AuditEntry.WEBHOOK_CHANGED,
                actor=actor,
                source_ip=source_ip,
                target=str(endpoint),
                detail={"before": before, "after": after},
            )
    return endpoint


def delete_endpoint(endpoint: WebhookEndpoint, *, actor=None, source_ip: str | None = None) -> None:
    """Remove the endpoint with its deliveries, sent or not."""
    with transaction.atomic():
        record_event(
            AuditEntry.WEBHOOK_DELETED,
            actor=actor,
            source_ip=source_ip,
            target=str(endpoint),
            detail=_audited(endpoint),
        )
        endpoint.delete()


def rotate_secret(
    endpoint: WebhookEndpoint, *, actor=None, source_ip: str | None = None
) -> tuple[WebhookEndpoint, str]:
    """A new secret: (endpoint, secret). The one it replaces signs too for
    PREVIOUS_SECRET_GRACE; a secret rotated before that is dropped at once."""
    secret = new_secret()
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_expires_at = timezone.now() + PREVIOUS_SECRET_GRACE
        endpoint.secret = secret
        endpoint.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at"])
        record_event(
            AuditEntry.WEBHOOK_SECRET_ROTATED,
            actor=actor,
            source_ip=source_ip,
            target=str(endpoint),
            detail={"previous_secret_expires_at": endpoint.previous_secret_expires_at},
        )
    return endpoint, secret


def send_test_event(endpoint: WebhookEndpoint, *, actor=None) -> Delivery:
    """A `webhook.test` event to this endpoint alone, whatever its filters."""
    event = new_event("webhook.test", {"webhook": endpoint.pk, "actor": actor_label(actor)}, None)
    with transaction.atomic():
        return enqueue(event, [endpoint])[0]


def send_again(delivery: Delivery) -> Delivery:
    """Send a delivery again with its webhook-id and body: a pending one at once, one that was
    delivered or given up as a new delivery (its record stays as it was)."""
    with transaction.atomic():
        if delivery.state == Delivery.PENDING:
            Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
            again = delivery
        else:
            again = Delivery.objects.create(
                endpoint_id=delivery.endpoint_id,
                event_id=delivery.event_id,
                event_type=delivery.event_type,
                body=delivery.body,
                application=delivery.application,
                environment=delivery.environment,
            )
        wake_after_commit()
    return again
