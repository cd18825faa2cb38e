"""Where a rollout stands among the agents: the fleet it counts, which agents its started waves
reach and which of them applied its version. Read-only; the API, the admin, `rollout_status`,
the metrics and the waves themselves (apps.rollouts.services) ask here."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count
from django.utils import timezone

from apps.agents.models import Agent
from apps.audit.models import AuditEntry
from apps.configs.models import ConfigVersion
from apps.rollouts.models import Rollout
from apps.rollouts.targets import target_version_expression, targets_new

# Agents that have not reported for this many polling periods hold nothing back.
STALE_PERIODS = 3


def get_latest_rollout(scope_id: int) -> Rollout | None:
    return (
        Rollout.objects.filter(scope_id=scope_id)
        .select_related("created_by")
        .order_by("-version")
        .first()
    )


def wave_starts(rollout: Rollout) -> list[AuditEntry]:
    """The audit entries of the rollout's started waves, in order: where its chart marks them."""
    return list(
        AuditEntry.objects.filter(
            action=AuditEntry.ROLLOUT_WAVE_STARTED,
            detail__version=rollout.version,
            application=rollout.scope.application.name,
            environment=rollout.scope.environment.name,
        ).order_by("at")
    )


def fleet(scope_id: int) -> list[dict]:
    """The agents a rollout of a scope counts: every one of the scope not revoked."""
    return list(
        Agent.objects.filter(scope_id=scope_id, revoked_at__isnull=True).values(
            "id", "name", "hostname", "labels", "last_seen", "applied_version"
        )
    )


@dataclass
class Progress:
    """Where a rollout stands among the agents, at one moment."""

    total: int = 0
    targeted: int = 0
    applied: int = 0
    # Live agents of the started waves that have not applied the version yet.
    waiting: list[dict] = field(default_factory=list)
    # Agents of the started waves that have not reported lately; they hold nothing back.
    stale: list[dict] = field(default_factory=list)
    # Every agent with its target, for the status command and the admin page.
    agents: list[dict] = field(default_factory=list)

    @property
    def wave_applied(self) -> bool:
        return not self.waiting


def stale_before(interval: int | None, now: datetime) -> datetime:
    return now - timedelta(seconds=STALE_PERIODS * (interval or 10))


def interval_of(rollout: Rollout) -> int | None:
    """The polling interval of the rollout's version: how often its agents should report."""
    return (
        ConfigVersion.objects.filter(scope_id=rollout.scope_id, version=rollout.version)
        .values_list("pooling_interval", flat=True)
        .first()
    )


def measure(rollout: Rollout, agents: list[dict] | None = None, now=None) -> Progress:
    """Count the agents of the rollout's started waves, and which of them applied it."""
    now = now or timezone.now()
    agents = fleet(rollout.scope_id) if agents is None else agents
    split = {"canary_labels": rollout.canary_labels, "cutoff": rollout.cutoff}
    finished = rollout.state == Rollout.COMPLETED
    stale_line = stale_before(interval_of(rollout), now)
    progress = Progress(total=len(agents))
    for agent in agents:
        targeted = finished or targets_new(split, rollout.version, agent["id"], agent["labels"])
        applied = (agent["applied_version"] or 0) >= rollout.version
        stale = agent["last_seen"] is None or agent["last_seen"] < stale_line
        agent = {**agent, "targeted": targeted, "applied": applied, "stale": stale}
        progress.agents.append(agent)
        if not targeted:
            continue
        progress.targeted += 1
        if applied:
            progress.applied += 1
        elif stale:
            progress.stale.append(agent)
        else:
            progress.waiting.append(agent)
    return progress


def agents_by_target(state: dict) -> dict[int, int]:
    """How many agents (not revoked) of the state's scope the controller answers each version
    now, counted by the database (one row per version, however large the fleet is at each
    scrape)."""
    rows = (
        Agent.objects.filter(scope_id=state["scope"], revoked_at__isnull=True)
        .annotate(target=target_version_expression(state))
        .values("target")
        .annotate(agents=Count("pk"))
        .order_by()
    )
    return {row["target"]: row["agents"] for row in rows}
