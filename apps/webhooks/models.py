"""Webhook endpoints and their outbox: one Delivery row per event and endpoint, written in the
transaction of the change that caused the event (apps/webhooks/events.py), and sent by the
delivery job (apps/webhooks/delivery.py) once that transaction has committed."""

from urllib.parse import urlsplit

from django.conf import settings
from django.db import models
from django.utils import timezone


def shown_url(url: str) -> str:
    """The URL as the audit log and the logs show it: its scheme and host only. A webhook URL's
    path often is a credential itself (a chat service's incoming-webhook URL), and the audit log
    is read by every role, where the endpoints are an operator's alone."""
    parts = urlsplit(url)
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{rest}"


class WebhookEndpoint(models.Model):
    """A URL told of the controller's events, signed with its own secret."""

    url = models.CharField(max_length=2048)
    # Event types (EVENT_TYPES in events.py), or ["*"] for every one.
    events = models.JSONField(default=list)
    # Application and environment names; an empty list matches every one.
    applications = models.JSONField(default=list, blank=True)
    environments = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    description = models.CharField(max_length=300, blank=True)
    # The signing secret, `whsec_` + base64. Kept as it is, not hashed: every controller process
    # must sign with it (apps/webhooks/signing.py says why). Never answered after its creation.
    secret = models.CharField(max_length=100)
    # The secret before the last rotation, still signing beside the new one until it expires.
    previous_secret = models.CharField(max_length=100, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Since when every try has failed (None: the last one succeeded); three days of that and
    # the endpoint is disabled, with why in `disabled_reason`.
    failing_since = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=500, blank=True)
    # One delivery pass at a time per endpoint, so that its deliveries go out in order: the
    # pass that claimed it holds it until `claimed_until` (renewed before each send), and a
    # pass of a process that died is taken over once that time has passed.
    claimed_by = models.CharField(max_length=36, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "webhook_endpoint"
        ordering = ["id"]

    def __str__(self) -> str:
        return f"webhook #{self.pk} {shown_url(self.url)}"


class Delivery(models.Model):
    """One event for one endpoint: the outbox row, and the record of its tries."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    STATES = [(PENDING, "pending"), (DELIVERED, "delivered"), (FAILED, "failed")]

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    # The event's id, sent as webhook-id on every try: receivers drop repeats by it.
    event_id = models.CharField(max_length=40, db_index=True)
    event_type = models.CharField(max_length=40)
    # The body exactly as sent, the same bytes on every try.
    body = models.TextField()
    application = models.CharField(max_length=63, blank=True)
    environment = models.CharField(max_length=63, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    state = models.CharField(max_length=10, choices=STATES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    response_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "webhook_delivery"
        ordering = ["-id"]
        verbose_name_plural = "deliveries"
        indexes = [
            # The delivery job's question: which pending rows are due, endpoint by endpoint.
            models.Index(
                fields=["endpoint", "next_attempt_at"],
                name="webhook_delivery_due",
                condition=models.Q(state="pending"),
            ),
            # The outbox's age (/metrics): the oldest pending row.
            models.Index(
                fields=["created_at"],
                name="webhook_delivery_pending_age",
                condition=models.Q(state="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} to webhook #{self.endpoint_id}"
