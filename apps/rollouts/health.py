"""The health gate of a rollout: the fleet's own hits decide whether the new version goes on.

Every worker counts its `GET /hit` outcomes per config version and the agents report them in
their heartbeats; the controller keeps the totals per agent and version (AgentHits). Right after
a batch of heartbeats with hits is written, `evaluate_rollout_health` (apps.rollouts.services,
where every change of a rollout's state happens) asks `judge` here, which compares the new version's
failure rate, over all its agents, with the plan's limit. Crossing it halts the rollout and puts
every agent back on the previous version's content at once (the abort's mechanism, a rollback),
or pauses it when the plan says `auto_rollback: false`. No daemon is needed: the decision is made
by whichever controller process writes the heartbeat that crosses the line, and the writers' lock
(a halt is a publish) or the rollout's row lock (a pause) lets exactly one process make it.

The new version is judged beside the previous one: when the previous version, over every agent's
hits with it, failed at least as often (and over at least `min_hits` hits), the fault is not the
change's (the upstream was failing already), and the rollout goes on with the reason saying so.
"""

from dataclasses import dataclass

from django.db.models import Sum

from apps.agents.models import AgentHits
from apps.rollouts.models import Rollout


@dataclass(frozen=True)
class Hits:
    ok: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.ok + self.failed

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.total if self.total else None

    def since(self, baseline: dict) -> "Hits":
        return Hits(
            max(0, self.ok - baseline.get("ok", 0)),
            max(0, self.failed - baseline.get("failed", 0)),
        )

    def describe(self) -> str:
        if not self.total:
            return "no hits yet"
        return f"{self.failure_rate:.2f} over {self.total} hits"

    def as_dict(self) -> dict:
        return {"ok": self.ok, "failed": self.failed, "failure_rate": self.failure_rate}


def hits_of_versions(versions: list[int]) -> dict[int, Hits]:
    """Every agent's hits with each of `versions`, added up, in one query."""
    rows = (
        AgentHits.objects.filter(version__in=versions)
        .values("version")
        .annotate(ok=Sum("ok"), failed=Sum("failed"))
    )
    found = {row["version"]: Hits(row["ok"] or 0, row["failed"] or 0) for row in rows}
    return {version: found.get(version, Hits()) for version in versions}


@dataclass(frozen=True)
class Verdict:
    """What the gate makes of a rollout's hits: `stop` when it must halt (or pause); `reason`
    says why in numbers, empty while there is nothing to say (too few hits, or healthy)."""

    new: Hits
    previous: Hits
    stop: bool
    reason: str


def health_of(rollout: Rollout) -> tuple[Hits, Hits]:
    """(the new version's hits since the last resume, the previous version's hits)."""
    hits = hits_of_versions([rollout.version, rollout.previous_version])
    return hits[rollout.version].since(rollout.hits_baseline or {}), hits[rollout.previous_version]


def judge(rollout: Rollout, new: Hits, previous: Hits) -> Verdict:
    """The gate's rule, on the hit totals alone."""
    rate = new.failure_rate
    if new.total < rollout.min_hits or rate is None or rate <= rollout.max_failure_rate:
        return Verdict(new, previous, stop=False, reason="")
    over = f"failure rate {new.describe()} > {rollout.max_failure_rate:.2f}"
    beside = f"previous version: {previous.describe()}"
    # "No more than the previous version": compared as whole numbers, so equal rates are equal.
    no_worse = new.failed * previous.total <= previous.failed * new.total
    if previous.total >= rollout.min_hits and no_worse:
        return Verdict(
            new,
            previous,
            stop=False,
            reason=f"{over}, but not halted: the previous version failed as often or more "
            f"({previous.describe()})",
        )
    return Verdict(new, previous, stop=True, reason=f"{over} ({beside})")
