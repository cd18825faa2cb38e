from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.scopes.services import default_scope_id


class ChangeRequestQuerySet(models.QuerySet):
    def make_stale(self, scope_id: int, current_version: int, keep=None) -> list[int]:
        """Mark stale every pending request of a scope based on a version other than
        `current_version` (but `keep`, the one being published); returns their ids. Runs in the
        transaction of the publish, under the scope's config writers' lock."""
        # An approved request waiting for its time (ScheduledChange) goes stale the same way.
        pending = self.filter(
            scope_id=scope_id, state__in=[ChangeRequest.PENDING, ChangeRequest.APPROVED]
        ).exclude(base_version=current_version)
        if keep is not None:
            pending = pending.exclude(pk=keep.pk)
        # Locked first, so a request rejected or cancelled meanwhile keeps that state.
        ids = list(pending.select_for_update().values_list("pk", flat=True))
        if ids:
            self.filter(pk__in=ids).update(state=ChangeRequest.STALE, decided_at=timezone.now())
        return ids


class ChangeRequest(models.Model):
    """A proposed configuration that waits for approvals before it is published."""

    PENDING = "pending"
    # Approved, and waiting for the time its scheduled change (ScheduledChange) names.
    APPROVED = "approved"
    PUBLISHED = "published"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    STALE = "stale"
    # Its scheduled time came before the approvals did.
    EXPIRED = "expired"
    STATES = [
        (PENDING, "pending"),
        (APPROVED, "approved"),
        (PUBLISHED, "published"),
        (REJECTED, "rejected"),
        (CANCELLED, "cancelled"),
        (STALE, "stale"),
        (EXPIRED, "expired"),
    ]

    scope = models.ForeignKey(
        "scopes.Scope", on_delete=models.PROTECT, related_name="+", default=default_scope_id
    )
    state = models.CharField(max_length=10, choices=STATES, default=PENDING, db_index=True)
    # The version current when it was proposed (0: none yet). Once another version is
    # published the request is stale: its author decided against content that is gone.
    base_version = models.PositiveIntegerField()
    # The whole content to publish, the current values filled in for fields a PUT left out.
    config_url = models.CharField(max_length=2048)
    pooling_interval = models.PositiveIntegerField()
    # The rollout plan the version is published with; null: to every agent at once.
    rollout = models.JSONField(null=True, blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Who published, rejected or cancelled it, when, and what they said.
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_comment = models.TextField(blank=True)
    published_version = models.PositiveIntegerField(null=True, blank=True)

    objects = ChangeRequestQuerySet.as_manager()

    class Meta:
        db_table = "change_request"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"change request #{self.pk}"


class Approval(models.Model):
    """One approver's yes to a change request; nobody approves the same request twice."""

    change_request = models.ForeignKey(
        ChangeRequest, on_delete=models.CASCADE, related_name="approvals"
    )
    approver = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    comment = models.TextField(blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "change_approval"
        ordering = ["at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["change_request", "approver"], name="one_approval_per_approver"
            )
        ]

    def __str__(self) -> str:
        return f"{self.approver} approved change request #{self.change_request_id}"


class ScheduledChange(models.Model):
    """A change to publish at a time: its content, plan and base version are decided when it
    is made, and a periodic job (apps/ops/jobs.py) publishes it at `publish_at`; in a scope
    needing approvals, only once its change request is approved."""

    SCHEDULED = "scheduled"
    PUBLISHED = "published"
    STALE = "stale"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    # Refused at its time by what refuses any publish (a rollout in progress); `reason` says.
    FAILED = "failed"
    STATES = [
        (SCHEDULED, "scheduled"),
        (PUBLISHED, "published"),
        (STALE, "stale"),
        (CANCELLED, "cancelled"),
        (EXPIRED, "expired"),
        (FAILED, "failed"),
    ]

    scope = models.ForeignKey("scopes.Scope", on_delete=models.PROTECT, related_name="+")
    state = models.CharField(max_length=10, choices=STATES, default=SCHEDULED)
    publish_at = models.DateTimeField()
    # As a change request's: the version current when it was made (0: none yet); when another
    # version is current at its time, it is stale and nothing is published.
    base_version = models.PositiveIntegerField()
    # The whole content, the current values filled in for fields a PUT left out.
    config_url = models.CharField(max_length=2048)
    pooling_interval = models.PositiveIntegerField()
    rollout = models.JSONField(null=True, blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    # In a scope needing approvals: the request approvers decide before `publish_at`.
    change_request = models.OneToOneField(
        ChangeRequest,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="schedule",
    )
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    # Who cancelled it (nobody for what the job decided).
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    reason = models.TextField(blank=True)
    published_version = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        db_table = "scheduled_change"
        ordering = ["publish_at", "id"]
        indexes = [models.Index(fields=["state", "publish_at"], name="scheduled_due")]

    def __str__(self) -> str:
        return f"scheduled change #{self.pk}"
