"""The health gate of a rollout: the fleet's own hits decide whether the new version goes on.

Every worker counts its `GET /hit` outcomes per config version and the agents report them in
their heartbeats; the controller keeps the totals per agent and version (AgentHits), and takes
hits only for a version the agent has been answered (apps.agents.services.accept_hits). Right
after a batch of heartbeats with hits is written, `evaluate_rollout_health` below asks `judge`.
Crossing the line halts the rollout and puts every agent back on the previous version's content
at once (apps.configs.actions.halt_rollout: the abort's mechanism, a rollback), or pauses it
when the plan says `auto_rollback: false` (apps.rollouts.services). No daemon is
needed: the decision is made by whichever controller process writes the heartbeat that crosses
the line, and the writers' lock (a halt is a publish) or the rollout's row lock (a pause) lets
exactly one process make it.

The gate judges the fleet, not the sum of what any one agent claims: an agent token is one
stolen credential away, and one heartbeat may carry a billion hits. Each agent votes once:

- an agent is judged once it has `min_hits` hits of the new version since the rollout started
  (or was last resumed), and fails when its own failure rate is above `max_failure_rate` and
  above its own failure rate with the previous version (when it has `min_hits` of those: the
  upstream was failing already, and the change is not to blame);
- the rollout stops when the failing agents are more than half of the judged ones and at least
  two, or one that is the only agent the rollout targets.

So one agent, whatever it reports, can neither stop a rollout that others find healthy nor keep
one going that most of the judged agents find failing.
"""

from dataclasses import dataclass, field
from functools import partial

from django.db.models import F, Sum
from django.utils import timezone

from apps.agents.models import Agent, AgentHits
from apps.configs.actions import halt_rollout
from apps.rollouts.models import Rollout
from apps.rollouts.services import AGENTS_NAMED, pause_unhealthy_rollout
from apps.rollouts.status import interval_of, stale_before
from apps.rollouts.targets import target_version_expression


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

    def describe(self) -> str:
        if not self.total:
            return "no hits yet"
        return f"{self.failure_rate:.2f} over {self.total} hits"

    def as_dict(self) -> dict:
        return {"ok": self.ok, "failed": self.failed, "failure_rate": self.failure_rate}

    def fails_more_than(self, other: "Hits") -> bool:
        # Compared as whole numbers, so that equal rates are equal.
        return self.failed * other.total > other.failed * self.total


def health_of(rollout: Rollout) -> tuple[Hits, Hits]:
    """(the new version's hits since the rollout started or was last resumed, over the agents
    not revoked; the previous version's hits over every agent), added up for the operator."""
    hits = AgentHits.objects.filter(agent__scope_id=rollout.scope_id)
    new = (
        hits.filter(version=rollout.version, agent__revoked_at__isnull=True)
        .annotate(
            ok_since=F("ok") - F("baseline_ok"), failed_since=F("failed") - F("baseline_failed")
        )
        .aggregate(ok=Sum("ok_since"), failed=Sum("failed_since"))
    )
    previous = hits.filter(version=rollout.previous_version).aggregate(
        ok=Sum("ok"), failed=Sum("failed")
    )
    return (
        Hits(new["ok"] or 0, new["failed"] or 0),
        Hits(previous["ok"] or 0, previous["failed"] or 0),
    )


@dataclass(frozen=True)
class Vote:
    """One agent's view of the new version: its hits since the rollout started (or was resumed)
    and, when it judged the new version as failing, its own hits of the previous version."""

    agent_id: str
    new: Hits
    previous: Hits = field(default_factory=Hits)


def votes_of(rollout: Rollout) -> list[Vote]:
    """Every agent (not revoked) with hits of the new version: in one query, plus one for the
    previous version's hits of the agents over the limit (the only ones it may excuse)."""
    rows = AgentHits.objects.filter(
        agent__scope_id=rollout.scope_id, version=rollout.version, agent__revoked_at__isnull=True
    ).values_list("agent_id", "ok", "failed", "baseline_ok", "baseline_failed")
    votes = {
        str(agent_id): Hits(ok - ok_before, failed - failed_before)
        for agent_id, ok, failed, ok_before, failed_before in rows
    }
    over = [agent_id for agent_id, hits in votes.items() if _over(rollout, hits)]
    previous = {}
    if over:
        previous = {
            str(agent_id): Hits(ok, failed)
            for agent_id, ok, failed in AgentHits.objects.filter(
                version=rollout.previous_version, agent_id__in=over
            ).values_list("agent_id", "ok", "failed")
        }
    return [
        Vote(agent_id, hits, previous.get(agent_id, Hits())) for agent_id, hits in votes.items()
    ]


def _over(rollout: Rollout, hits: Hits) -> bool:
    rate = hits.failure_rate
    return hits.total >= rollout.min_hits and rate is not None and rate > rollout.max_failure_rate


@dataclass(frozen=True)
class Verdict:
    """What the gate makes of a rollout's votes: `stop` when it must halt (or pause); `reason`
    says why in numbers, empty while there is nothing to say (too few hits, or healthy).
    `failing` names the agents that voted against the new version."""

    stop: bool
    reason: str
    judged: int = 0
    failing: tuple[str, ...] = ()


def judge(rollout: Rollout, votes: list[Vote], alone=lambda agent_id: False) -> Verdict:
    """The gate's rule (the module's docstring states it). `alone(agent_id)` says whether that
    agent is the only one the rollout targets; it is asked only when a single agent fails."""
    judged = [vote for vote in votes if vote.new.total >= rollout.min_hits]
    over = [vote for vote in judged if _over(rollout, vote.new)]
    if not over:
        return Verdict(stop=False, reason="", judged=len(judged))
    excused = [
        vote
        for vote in over
        if vote.previous.total >= rollout.min_hits and not vote.new.fails_more_than(vote.previous)
    ]
    excused_ids = {vote.agent_id for vote in excused}
    failing = [vote for vote in over if vote.agent_id not in excused_ids]
    worst = max(over, key=lambda vote: (vote.new.failure_rate, vote.new.total))
    said = (
        f"{len(over)} of {len(judged)} agents with at least {rollout.min_hits} hits of "
        f"v{rollout.version} fail more than {rollout.max_failure_rate:.2f} of them (the worst "
        f"{worst.new.describe()})"
    )
    if excused and failing:
        said += f", {len(excused)} of them as often or more with the previous version"
    names = tuple(vote.agent_id for vote in failing)
    majority = 2 * len(failing) > len(judged)
    if majority and (len(failing) >= 2 or alone(failing[0].agent_id)):
        return Verdict(stop=True, reason=said, judged=len(judged), failing=names)
    if not failing:
        why = "each failed as often or more with the previous version"
    elif not majority:
        why = f"{len(failing)} failing is not more than half of {len(judged)}"
    else:
        why = "one agent alone does not decide while the rollout targets others"
    return Verdict(
        stop=False, reason=f"{said}, but not halted: {why}", judged=len(judged), failing=names
    )


# Acting on the verdict -----------------------------------------------------------------------


def evaluate_rollout_health(versions) -> list[Rollout]:
    """Run the gate on each rolling or paused rollout (one per scope at most) whose new version
    had hits just recorded (`versions`: the versions of the hits in the batch written; a
    rollout of another scope with the same version is judged too, on its own agents' hits,
    which costs a few queries and changes nothing). The new version's rate only moves with its
    own hits; the previous version's hits are read when it is judged. Returns the rollouts this
    call halted or paused."""
    versions = set(versions)
    if not versions:
        return []
    rollouts = Rollout.objects.filter(state__in=Rollout.ACTIVE_STATES, version__in=versions).only(
        "pk",
        "scope",
        "version",
        "previous_version",
        "state",
        "reason",
        "auto_rollback",
        "max_failure_rate",
        "min_hits",
        "canary_labels",
        "cutoff",
    )
    stopped = [judge_rollout(rollout) for rollout in rollouts]
    return [rollout for rollout in stopped if rollout is not None]


def judge_rollout(rollout: Rollout) -> Rollout | None:
    """The gate on one rollout; returns it when this call halted or paused it."""
    if rollout.state == Rollout.PAUSED and not rollout.auto_rollback:
        # Paused already, and nothing more to do than wait for the operator.
        return None
    verdict = judge(rollout, votes_of(rollout), partial(_only_target, rollout))
    if not verdict.stop:
        if verdict.reason and rollout.state == Rollout.ROLLING:
            # Kept up to date for the admin and rollout_status (an operator's pause reason is
            # left alone); a conditional UPDATE, so no lock is waited for.
            Rollout.objects.filter(pk=rollout.pk, state=Rollout.ROLLING).exclude(
                reason=verdict.reason
            ).update(reason=verdict.reason)
        return None
    new, previous = health_of(rollout)
    detail = {
        "reason": verdict.reason,
        "agents_judged": verdict.judged,
        "agents_failing": list(verdict.failing[:AGENTS_NAMED]),
        "hits": new.as_dict(),
        "previous_hits": previous.as_dict(),
        "max_failure_rate": rollout.max_failure_rate,
        "min_hits": rollout.min_hits,
    }
    if rollout.auto_rollback:
        return halt_rollout(rollout, detail)
    return pause_unhealthy_rollout(rollout, detail)


def _only_target(rollout: Rollout, agent_id: str) -> bool:
    """Whether `agent_id` is the only live agent (not revoked, heard from lately) that the
    rollout gives its new version: then its vote alone may stop the rollout."""
    split = {
        "previous": {"version": rollout.previous_version},
        "canary_labels": rollout.canary_labels,
        "cutoff": rollout.cutoff,
    }
    others = (
        Agent.objects.filter(
            scope_id=rollout.scope_id,
            revoked_at__isnull=True,
            last_seen__gte=stale_before(interval_of(rollout), timezone.now()),
        )
        .exclude(pk=agent_id)
        .annotate(target=target_version_expression({"version": rollout.version, "rollout": split}))
        .filter(target=rollout.version)
    )
    return not others.exists()
