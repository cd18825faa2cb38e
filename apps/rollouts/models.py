from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.scopes.services import default_scope_id

# A rollout's states, named so the OpenAPI schema can tell them from a change request's.
STATES = [
    ("rolling", "rolling"),
    ("paused", "paused"),
    ("completed", "completed"),
    ("halted", "halted"),
    ("aborted", "aborted"),
]


class Rollout(models.Model):
    """The staged rollout of one config version: canary agents first, then waves of the others."""

    ROLLING = "rolling"
    PAUSED = "paused"
    COMPLETED = "completed"
    HALTED = "halted"
    ABORTED = "aborted"
    STATES = STATES
    # While a rollout is in one of these, the fleet is split between two versions and a new
    # publish is refused: it would strand the agents that have not reached this version yet.
    ACTIVE_STATES = (ROLLING, PAUSED)
    # The agents keep their split targets in these. A halted rollout splits nothing: its halt
    # published a new version carrying the previous content, to every agent at once.
    SPLIT_STATES = (ROLLING, PAUSED)

    scope = models.ForeignKey(
        "scopes.Scope", on_delete=models.PROTECT, related_name="+", default=default_scope_id
    )
    version = models.PositiveIntegerField()
    previous_version = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=STATES, default=ROLLING, db_index=True)
    # The newest started wave: 0 is the canaries, k >= 1 is waves[k - 1] percent of the others.
    wave = models.PositiveSmallIntegerField(default=0)
    waves = models.JSONField()
    canary_labels = models.JSONField(default=dict, blank=True)
    bake_seconds = models.PositiveIntegerField(default=0)
    # The hash of the last non-canary agent the started waves reach ("" for none): an agent is
    # on the new version when its hash of (agent id, version) sorts at or before it. One string
    # answers every agent, so the watch decides without a query.
    cutoff = models.CharField(max_length=64, blank=True, default="")
    # Raised whenever the answer to some agent changes, so that the watch of every controller
    # process can tell a newer announcement of the same version from an older one.
    revision = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField(default=timezone.now)
    wave_started_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # [seconds since the start, agents applied] each time the count moved: the admin's chart.
    progress = models.JSONField(default=list, blank=True)
    # The health gate (apps.rollouts.health): each targeted agent whose own failed / (ok +
    # failed) hits of the new version exceed max_failure_rate over at least min_hits hits votes
    # against it; when such agents are a majority, the rollout is halted and everyone goes back
    # to the previous content, or only paused when auto_rollback is off.
    auto_rollback = models.BooleanField(default=True)
    max_failure_rate = models.FloatField(default=0.2)
    min_hits = models.PositiveIntegerField(default=20)
    # Seconds a started wave may take to be applied by all its live agents; past them the
    # rollout pauses, naming the agents that did not apply. None: it waits as long as it takes.
    wave_timeout_seconds = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-version"]
        get_latest_by = "version"
        constraints = [
            models.UniqueConstraint(fields=["scope", "version"], name="one_rollout_per_version")
        ]

    def __str__(self) -> str:
        return f"rollout of v{self.version} ({self.state}, wave {self.wave})"

    @property
    def last_wave(self) -> int:
        return len(self.waves)

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    def split(self, previous: dict) -> dict | None:
        """The part of the served state that splits the fleet (see apps.rollouts.targets), or
        None when everyone gets the newest version. `previous` is the previous version's
        answer."""
        if self.state not in self.SPLIT_STATES:
            return None
        return {"previous": previous, "canary_labels": self.canary_labels, "cutoff": self.cutoff}
