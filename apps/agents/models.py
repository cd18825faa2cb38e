import uuid

from django.conf import settings
from django.db import models

from apps.scopes.services import default_scope_id


class Agent(models.Model):
    """A registered agent (the seed's `agents` table) and what it last reported."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # The scope the agent serves: its token reads that scope's configuration and nothing else.
    scope = models.ForeignKey(
        "scopes.Scope", on_delete=models.PROTECT, related_name="+", default=default_scope_id
    )
    name = models.CharField(max_length=200, blank=True)
    hostname = models.CharField(max_length=255, blank=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    applied_version = models.PositiveIntegerField(null=True, blank=True)
    workers = models.JSONField(default=list, blank=True)
    # `ring: canary`: rollouts pick their canaries by them, so only an operator sets them: bound
    # at registration by the registration token, changed afterwards by set_agent_labels.
    labels = models.JSONField(default=dict, blank=True)
    # When an operator last changed the labels: each controller process reads the recent changes
    # with the revocations and forgets those agents, whose targets they may move.
    labels_changed_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "agents"
        ordering = ["created_at"]
        # Each controller process reads the recent revocations twice a second: an index of the
        # few revoked rows keeps that read from scanning the whole fleet.
        indexes = [
            models.Index(
                fields=["revoked_at"],
                name="agents_revoked",
                condition=models.Q(revoked_at__isnull=False),
            ),
            models.Index(
                fields=["labels_changed_at"],
                name="agents_labels_changed",
                condition=models.Q(labels_changed_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.name or self.hostname or str(self.id)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class AgentHits(models.Model):
    """How many hits one agent's workers served with one config version, ok and failed, summed
    over its heartbeats: what a rollout's health check reads."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="version_hits")
    version = models.PositiveIntegerField()
    ok = models.PositiveBigIntegerField(default=0)
    failed = models.PositiveBigIntegerField(default=0)
    # The totals when the rollout of this version started, or was last resumed: its health gate
    # counts only the hits since. A rollout is of one version, so one pair per row is enough; a
    # database default, as the heartbeats' batched INSERT leaves them out.
    baseline_ok = models.PositiveBigIntegerField(default=0, db_default=0)
    baseline_failed = models.PositiveBigIntegerField(default=0, db_default=0)
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "agent_hits"
        constraints = [
            models.UniqueConstraint(fields=["agent", "version"], name="agent_hits_once_per_version")
        ]
        indexes = [models.Index(fields=["version"], name="agent_hits_by_version")]

    def __str__(self) -> str:
        return f"{self.agent_id} v{self.version}: {self.ok} ok, {self.failed} failed"


class RegistrationToken(models.Model):
    """A one-time token that lets one agent register; only its SHA-256 is kept."""

    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    # The scope of the agent that registers with it.
    scope = models.ForeignKey(
        "scopes.Scope", on_delete=models.PROTECT, related_name="+", default=default_scope_id
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The labels the agent registering with this token gets, chosen by the operator who issued
    # it; the agent's own labels are taken too (never over these) only when this allows them.
    labels = models.JSONField(default=dict, blank=True)
    allow_agent_labels = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"registration token {self.token_hash[:8]}…"
