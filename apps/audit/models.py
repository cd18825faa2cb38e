from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone


class AuditLogIsAppendOnly(Exception):
    """Raised on any attempt to change or remove an audit entry."""


class AuditEntryQuerySet(models.QuerySet):
    # Bulk paths skip Model.save() and delete(), so they are closed here as well.
    def update(self, **kwargs):
        raise AuditLogIsAppendOnly("Audit entries cannot be changed.")

    def delete(self):
        raise AuditLogIsAppendOnly("Audit entries cannot be deleted.")


class AuditEntry(models.Model):
    """One thing an operator, an agent or a command did: who, from where, when, and what."""

    # The actions, each with a label for the admin.
    LOGIN_SUCCEEDED = "login.succeeded"
    LOGIN_FAILED = "login.failed"
    TOKEN_REFRESHED = "token.refreshed"  # noqa: S105 - an action name, not a secret
    CONFIG_CREATED = "config.created"
    CONFIG_UPDATED = "config.updated"
    CONFIG_ROLLED_BACK = "config.rolled_back"
    REGISTRATION_TOKEN_ISSUED = "registration_token.issued"  # noqa: S105 - an action name
    AGENT_REGISTERED = "agent.registered"
    AGENT_REVOKED = "agent.revoked"
    AGENT_LABELS_CHANGED = "agent.labels_changed"
    ROLLOUT_STARTED = "rollout.started"
    ROLLOUT_WAVE_STARTED = "rollout.wave_started"
    ROLLOUT_PROMOTED = "rollout.promoted"
    ROLLOUT_PAUSED = "rollout.paused"
    ROLLOUT_RESUMED = "rollout.resumed"
    ROLLOUT_COMPLETED = "rollout.completed"
    ROLLOUT_ABORTED = "rollout.aborted"
    ROLLOUT_HALTED = "rollout.halted"
    PREFLIGHT_REFUSED = "config.preflight_refused"
    ADMIN_ADDED = "admin.added"
    ADMIN_CHANGED = "admin.changed"
    ADMIN_DELETED = "admin.deleted"
    ROLES_CHANGED = "roles.changed"
    CHANGE_PROPOSED = "change.proposed"
    CHANGE_APPROVED = "change.approved"
    CHANGE_REJECTED = "change.rejected"
    CHANGE_CANCELLED = "change.cancelled"
    CHANGE_STALE = "change.stale"
    CONFIG_EMERGENCY = "config.emergency"
    APPLICATION_CREATED = "application.created"
    APPLICATION_CHANGED = "application.changed"
    ENVIRONMENT_CREATED = "environment.created"
    ENVIRONMENT_CHANGED = "environment.changed"
    API_TOKEN_ISSUED = "api_token.issued"  # noqa: S105 - an action name, not a secret
    API_TOKEN_REVOKED = "api_token.revoked"  # noqa: S105 - an action name, not a secret
    WEBHOOK_CREATED = "webhook.created"
    WEBHOOK_CHANGED = "webhook.changed"
    WEBHOOK_DELETED = "webhook.deleted"
    WEBHOOK_SECRET_ROTATED = "webhook.secret_rotated"  # noqa: S105 - an action name
    WEBHOOK_DISABLED = "webhook.disabled"
    SCHEDULED_CREATED = "scheduled.created"
    SCHEDULED_CANCELLED = "scheduled.cancelled"
    SCHEDULED_STALE = "scheduled.stale"
    SCHEDULED_EXPIRED = "scheduled.expired"
    SCHEDULED_FAILED = "scheduled.failed"
    ACTIONS = [
        (LOGIN_SUCCEEDED, "Login succeeded"),
        (LOGIN_FAILED, "Login failed"),
        (TOKEN_REFRESHED, "Token refreshed"),
        (CONFIG_CREATED, "Config created"),
        (CONFIG_UPDATED, "Config updated"),
        (CONFIG_ROLLED_BACK, "Config rolled back"),
        (REGISTRATION_TOKEN_ISSUED, "Registration token issued"),
        (AGENT_REGISTERED, "Agent registered"),
        (AGENT_REVOKED, "Agent revoked"),
        (AGENT_LABELS_CHANGED, "Agent labels changed"),
        (ROLLOUT_STARTED, "Rollout started"),
        (ROLLOUT_WAVE_STARTED, "Rollout wave started"),
        (ROLLOUT_PROMOTED, "Rollout promoted"),
        (ROLLOUT_PAUSED, "Rollout paused"),
        (ROLLOUT_RESUMED, "Rollout resumed"),
        (ROLLOUT_COMPLETED, "Rollout completed"),
        (ROLLOUT_ABORTED, "Rollout aborted"),
        (ROLLOUT_HALTED, "Rollout halted by its failure rate"),
        (PREFLIGHT_REFUSED, "Publish refused by its pre-flight"),
        (ADMIN_ADDED, "Added in the admin"),
        (ADMIN_CHANGED, "Changed in the admin"),
        (ADMIN_DELETED, "Deleted in the admin"),
        (ROLES_CHANGED, "Roles changed"),
        (CHANGE_PROPOSED, "Change proposed"),
        (CHANGE_APPROVED, "Change approved"),
        (CHANGE_REJECTED, "Change rejected"),
        (CHANGE_CANCELLED, "Change cancelled"),
        (CHANGE_STALE, "Change went stale"),
        (CONFIG_EMERGENCY, "Emergency publish"),
        (APPLICATION_CREATED, "Application created"),
        (APPLICATION_CHANGED, "Application changed"),
        (ENVIRONMENT_CREATED, "Environment created"),
        (ENVIRONMENT_CHANGED, "Environment changed"),
        (API_TOKEN_ISSUED, "API token issued"),
        (API_TOKEN_REVOKED, "API token revoked"),
        (WEBHOOK_CREATED, "Webhook created"),
        (WEBHOOK_CHANGED, "Webhook changed"),
        (WEBHOOK_DELETED, "Webhook deleted"),
        (WEBHOOK_SECRET_ROTATED, "Webhook secret rotated"),
        (WEBHOOK_DISABLED, "Webhook disabled after failing"),
        (SCHEDULED_CREATED, "Change scheduled"),
        (SCHEDULED_CANCELLED, "Scheduled change cancelled"),
        (SCHEDULED_STALE, "Scheduled change went stale"),
        (SCHEDULED_EXPIRED, "Scheduled change expired unapproved"),
        (SCHEDULED_FAILED, "Scheduled change refused at its time"),
    ]

    at = models.DateTimeField(default=timezone.now, db_index=True)
    action = models.CharField(max_length=40, choices=ACTIONS, db_index=True)
    # Text, not a foreign key: the entry must outlive the user or agent it names. An admin's
    # email, "agent:<id>" for an agent, "system" for a command run on the server.
    actor = models.CharField(max_length=254, db_index=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    target = models.CharField(max_length=300, blank=True)
    # The scope the entry is about, by name (text, like the actor, so that it outlives nothing);
    # blank for what belongs to no scope (a login, a role, an application itself).
    application = models.CharField(max_length=63, blank=True, db_index=True)
    environment = models.CharField(max_length=63, blank=True, db_index=True)
    detail = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        db_table = "audit_log"
        ordering = ["-at", "-id"]
        verbose_name = "audit entry"
        verbose_name_plural = "audit log"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target}".strip()

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise AuditLogIsAppendOnly("Audit entries cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AuditLogIsAppendOnly("Audit entries cannot be deleted.")
