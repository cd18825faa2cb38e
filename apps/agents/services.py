"""Registration tokens, agent registration, heartbeats and revocation."""

import json
import logging
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q, QuerySet, TextField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce
from django.db.models.lookups import LessThan
from django.utils import timezone
from rest_framework import status

from apps.agents.auth import forget_agent
from apps.agents.labels import ignore_reported_labels
from apps.agents.models import Agent, AgentHits, RegistrationToken
from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from apps.configs.notifications import publish_labels, publish_revocation
from apps.configs.services import get_current_state
from apps.ops import metrics
from apps.rollouts.health import evaluate_rollout_health
from apps.rollouts.targets import target_of, target_version_expression, targets_new
from apps.scopes.services import default_scope_id, scope_names
from apps.webhooks.events import emit
from controller_site.errors import ServiceError
from controller_site.tokens import AGENT_PREFIX, REGISTRATION_PREFIX, hash_token, new_token
from protocol.labels import MAX_LABELS

logger = logging.getLogger(__name__)


class InvalidRegistrationToken(ServiceError):
    status_code = status.HTTP_401_UNAUTHORIZED

    def __init__(self) -> None:
        super().__init__("Registration token is unknown, already used or expired.")


class TooManyLabels(ServiceError):
    def __init__(self, count: int) -> None:
        super().__init__(
            f"The token's labels and the agent's together are {count}; at most {MAX_LABELS}."
        )


def issue_registration_token(
    *,
    scope_id: int | None = None,
    actor=None,
    ttl: int | None = None,
    labels: dict[str, str] | None = None,
    allow_agent_labels: bool = False,
    source_ip: str | None = None,
) -> tuple[str, RegistrationToken]:
    """Create a one-time registration token of a scope (the default scope when None); the plain
    token is returned once and not stored.

    The agent that registers with it belongs to the token's scope and gets `labels`; its own
    labels are added (never over these) only with `allow_agent_labels`, else they are left
    out."""
    ttl = settings.REGISTRATION_TOKEN_TTL if ttl is None else ttl
    token = new_token(REGISTRATION_PREFIX)
    with transaction.atomic():
        record = RegistrationToken.objects.create(
            scope_id=scope_id or default_scope_id(),
            token_hash=hash_token(token),
            expires_at=timezone.now() + timedelta(seconds=ttl),
            created_by=actor,
            labels=labels or {},
            allow_agent_labels=allow_agent_labels,
        )
        # The entry names the token by its row id: neither the token nor its hash is logged.
        record_event(
            AuditEntry.REGISTRATION_TOKEN_ISSUED,
            actor=actor,
            source_ip=source_ip,
            target=f"registration token #{record.pk}",
            scope=scope_names(record.scope_id),
            detail={
                "expires_at": record.expires_at.isoformat(),
                "ttl": ttl,
                "labels": record.labels,
                "allow_agent_labels": allow_agent_labels,
            },
        )
    logger.info("registration token issued, expires %s", record.expires_at.isoformat())
    return token, record


def bound_labels(record: RegistrationToken, offered: dict[str, str]) -> tuple[dict, dict]:
    """(the labels an agent registering with this token gets, those it offered that are left
    out). The token's own labels always hold; the agent's are added only when it allows them."""
    labels = dict(record.labels)
    left_out = {}
    for key, value in offered.items():
        if record.allow_agent_labels and key not in labels:
            labels[key] = value
        elif labels.get(key) != value:
            left_out[key] = value
    if len(labels) > MAX_LABELS:
        raise TooManyLabels(len(labels))
    return labels, left_out


def register_agent(
    *,
    token: str,
    name: str = "",
    hostname: str = "",
    labels: dict[str, str] | None = None,
    source_ip: str | None = None,
) -> tuple[Agent, str]:
    """Consume a registration token and create an agent; returns (agent, agent token). The
    agent's labels are the token's (bound_labels): `labels`, the agent's own, count only as far
    as the token allows."""
    now = timezone.now()
    digest = hash_token(token)
    with transaction.atomic():
        # The conditional UPDATE is the arbiter: of two registrations with one token, exactly
        # one sees a row count of 1.
        won = RegistrationToken.objects.filter(
            token_hash=digest, used_at__isnull=True, expires_at__gt=now
        ).update(used_at=now)
        if won != 1:
            raise InvalidRegistrationToken()
        record = RegistrationToken.objects.get(token_hash=digest)
        agent_labels, left_out = bound_labels(record, labels or {})
        agent_token = new_token(AGENT_PREFIX)
        agent = Agent.objects.create(
            scope_id=record.scope_id,
            name=name,
            hostname=hostname,
            labels=agent_labels,
            token_hash=hash_token(agent_token),
            last_seen=now,
        )
        RegistrationToken.objects.filter(pk=record.pk).update(used_by=agent)
        detail = {
            "name": name,
            "hostname": hostname,
            "labels": agent_labels,
            "registration_token": record.pk,
        }
        if left_out:
            detail["labels_left_out"] = left_out
        scope = scope_names(agent.scope_id)
        record_event(
            AuditEntry.AGENT_REGISTERED,
            actor=agent,
            source_ip=source_ip,
            target=f"agent {agent.pk}",
            scope=scope,
            detail=detail,
        )
        emit("agent.registered", {"agent": str(agent.pk), **detail}, scope)
    logger.info("agent %s registered (name=%r, hostname=%r)", agent.pk, name, hostname)
    if left_out:
        logger.warning(
            "agent %s: labels %s left out: registration token #%s %s",
            agent.pk,
            ", ".join(f"{key}={value}" for key, value in sorted(left_out.items())),
            record.pk,
            "binds other values to them"
            if record.allow_agent_labels
            else "does not allow the agent's own labels",
        )
    return agent, agent_token


def set_agent_labels(
    agent: Agent, labels: dict[str, str], *, actor=None, source_ip: str | None = None
) -> bool:
    """Replace an agent's labels (an operator's decision), audited. Every controller process
    answers the agent by its new labels from its next request on, and a watch it holds is woken
    when they move its target. Returns False when they were those already."""
    with transaction.atomic():
        before = (
            Agent.objects.select_for_update().filter(pk=agent.pk).values_list("labels", flat=True)
        ).first()
        if before == labels:
            return False
        Agent.objects.filter(pk=agent.pk).update(labels=labels, labels_changed_at=timezone.now())
        record_event(
            AuditEntry.AGENT_LABELS_CHANGED,
            actor=actor,
            source_ip=source_ip,
            target=f"agent {agent.pk}",
            scope=scope_names(agent.scope_id),
            detail={"before": before, "after": labels},
        )
        transaction.on_commit(partial(publish_labels, agent.pk, labels))
    # This process remembers the agent with its labels, which pick its target during a
    # rollout; the others forget it at their next sweep (sweep_revocations).
    forget_agent(agent)
    agent.labels = labels
    logger.info("agent %s: labels set to %s", agent.pk, labels)
    return True


def record_heartbeat(
    agent: Agent,
    *,
    applied_version: int | None,
    workers: list[dict],
    hits: list[dict] = (),
    labels: dict[str, str] | None = None,
) -> None:
    """Store one heartbeat. Its labels change nothing (only an operator sets them): when they
    differ from the stored ones, that is counted and logged (ignore_reported_labels)."""
    now = timezone.now()
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(
            last_seen=now, applied_version=applied_version, workers=workers
        )
        versions = add_hits(
            [(agent.pk, item["version"], item["ok"], item["failed"]) for item in hits], now
        )
    judge_rollout_health(versions)
    ignore_reported_labels(agent, labels)


# Adds to the totals rather than setting them: each heartbeat carries the hits since the one
# before. Arrays joined by position, as for the heartbeats below. (The table is AgentHits'.)
ADD_HITS_SQL = """
    INSERT INTO agent_hits (agent_id, version, ok, failed, updated_at)
    SELECT hit.id, hit.version, hit.ok, hit.failed, %s
    FROM unnest(%s::uuid[], %s::integer[], %s::bigint[], %s::bigint[])
        AS hit (id, version, ok, failed)
    ON CONFLICT (agent_id, version) DO UPDATE SET
        ok = agent_hits.ok + excluded.ok,
        failed = agent_hits.failed + excluded.failed,
        updated_at = excluded.updated_at
"""


def add_hits(rows: list[tuple], now: datetime) -> set[int]:
    """Add (agent_id, version, ok, failed) rows to the per-agent, per-version totals, in one
    statement, but for those accept_hits drops. Returns the versions written."""
    totals: dict[tuple, list[int]] = {}
    for agent_id, version, ok, failed in rows:
        if ok or failed:
            # One statement may not touch a row twice: same agent and version are summed first.
            total = totals.setdefault((str(agent_id), version), [0, 0])
            total[0] += ok
            total[1] += failed
    if totals:
        totals = accept_hits(totals)
    if not totals:
        return set()
    if connection.vendor != "postgresql":
        # The embedded SQLite: one update or insert per row, inside one transaction.
        with transaction.atomic():
            for (agent_id, version), (ok, failed) in totals.items():
                hits, _ = AgentHits.objects.select_for_update().get_or_create(
                    agent_id=agent_id, version=version, defaults={"updated_at": now}
                )
                AgentHits.objects.filter(pk=hits.pk).update(
                    ok=F("ok") + ok, failed=F("failed") + failed, updated_at=now
                )
        return {version for _, version in totals}
    keys = list(totals)
    with connection.cursor() as cursor:
        cursor.execute(
            ADD_HITS_SQL,
            [
                now,
                [agent_id for agent_id, _ in keys],
                [version for _, version in keys],
                [totals[key][0] for key in keys],
                [totals[key][1] for key in keys],
            ],
        )
    return {version for _, version in keys}


def accept_hits(totals: dict) -> dict:
    """Of {(agent_id, version): [ok, failed]}, the hits of versions the agent has been answered:
    the current version when its rollout has reached the agent, or any earlier one (the version
    it was on before). Hits of a version above the current one (sent before it exists), or of a
    rollout's new version from an agent its waves have not reached, are dropped, counted and
    logged: one agent token must not judge a rollout it takes no part in."""
    # Each agent is judged by its own scope's state: one query for the agents' scopes and
    # labels (canaries are told by their labels), one cached state per scope.
    agents = {
        str(pk): (scope_id, agent_labels)
        for pk, scope_id, agent_labels in Agent.objects.filter(
            pk__in={agent_id for agent_id, _ in totals}
        ).values_list("pk", "scope_id", "labels")
    }
    states = {scope_id: get_current_state(scope_id) for scope_id, _ in agents.values()}
    accepted = {}
    for (agent_id, version), counts in totals.items():
        if agent_id not in agents:
            continue  # deleted since its heartbeat: nothing to count against
        scope_id, agent_labels = agents[agent_id]
        newest, split = states[scope_id]["version"], states[scope_id].get("rollout")
        if version > newest:
            reason, why = "future_version", f"above the current version (v{newest})"
        elif (
            version == newest
            and split is not None
            and not targets_new(split, newest, agent_id, agent_labels or {})
        ):
            reason, why = "not_targeted", "which the rollout has not given it"
        else:
            accepted[(agent_id, version)] = counts
            continue
        metrics.instruments().heartbeat_hits_rejected.labels(reason).inc()
        logger.warning(
            "agent %s reported hits of v%s, %s: %s ok and %s failed dropped",
            agent_id,
            version,
            why,
            counts[0],
            counts[1],
        )
    return accepted


def hits_of(agents: list[Agent], versions: dict) -> dict:
    """{agent_id: {"version", "ok", "failed"}} of each agent's hits with the version
    `versions[agent_id]`, in one query; agents with none are left out."""
    wanted = {(str(agent_id), version) for agent_id, version in versions.items() if version}
    if not wanted:
        return {}
    rows = AgentHits.objects.filter(
        agent__in=agents, version__in={version for _, version in wanted}
    ).values_list("agent_id", "version", "ok", "failed")
    return {
        str(agent_id): {"version": version, "ok": ok, "failed": failed}
        for agent_id, version, ok, failed in rows
        if (str(agent_id), version) in wanted
    }


# Four arrays of one element per report, joined by position: the statement's text does not grow
# with the batch, and PostgreSQL plans it once. (The table is Agent's db_table.)
RECORD_HEARTBEATS_SQL = """
    UPDATE agents AS agent
    SET last_seen = report.seen, applied_version = report.applied, workers = report.workers
    FROM unnest(%s::uuid[], %s::timestamptz[], %s::integer[], %s::jsonb[])
        AS report (id, seen, applied, workers)
    WHERE agent.id = report.id
"""


def record_heartbeats(reports: dict) -> None:
    """Store many agents' reports, {agent_id: (seen at, applied_version, workers, hits)}, in
    one statement, and their hits in one more: after a change the whole fleet reports within a
    second. The hits are added after the agents are written, so a batch that fails at either
    statement is written again whole without counting a hit twice."""
    if not reports:
        return
    _update_agents(reports)
    versions = add_hits(
        [
            (pk, item["version"], item["ok"], item["failed"])
            for pk, report in reports.items()
            for item in report[3]
        ],
        timezone.now(),
    )
    judge_rollout_health(versions)


def judge_rollout_health(versions: set[int]) -> None:
    """Once hits are written: the rollout's health gate (apps.rollouts.health), which may halt
    it. Its failure must not cost the heartbeats their record (a batch whose write raised is
    written again, and its hits would count twice), so it is logged here and not raised."""
    if not versions:
        return
    try:
        evaluate_rollout_health(versions)
    except Exception:  # noqa: BLE001 - the next batch with hits judges again
        logger.exception("the rollout health check failed; the next heartbeats retry it")


def _update_agents(reports: dict) -> None:
    if connection.vendor != "postgresql":
        # The embedded SQLite: Django's bulk update, one CASE statement per field.
        Agent.objects.bulk_update(
            [
                Agent(pk=pk, last_seen=seen, applied_version=applied, workers=workers)
                for pk, (seen, applied, workers, *_) in reports.items()
            ],
            ["last_seen", "applied_version", "workers"],
        )
        return
    ids, seen, applied, workers = [], [], [], []
    for pk, (seen_at, applied_version, worker_states, *_) in reports.items():
        ids.append(str(pk))
        seen.append(seen_at)
        applied.append(applied_version)
        workers.append(json.dumps(worker_states))
    with connection.cursor() as cursor:
        cursor.execute(RECORD_HEARTBEATS_SQL, [ids, seen, applied, workers])


def revoke_agent(agent: Agent, *, actor=None, source_ip: str | None = None) -> bool:
    """Refuse the agent's token from now on. Returns False when it was revoked already."""
    with transaction.atomic():
        revoked = Agent.objects.filter(pk=agent.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if revoked:
            scope, detail = scope_names(agent.scope_id), {"name": agent.name}
            detail["hostname"] = agent.hostname
            entry = record_event(
                AuditEntry.AGENT_REVOKED,
                actor=actor,
                source_ip=source_ip,
                target=f"agent {agent.pk}",
                scope=scope,
                detail=detail,
            )
            emit("agent.revoked", {"agent": str(agent.pk), "actor": entry.actor, **detail}, scope)
            # Cut the watch it may be holding, in every controller process.
            transaction.on_commit(partial(publish_revocation, agent.pk))
    forget_agent(agent)
    if revoked:
        logger.info("agent %s revoked", agent.pk)
    return bool(revoked)


STATUSES = ("in_sync", "behind", "stale", "revoked")
# Before any config exists, agents check every 10 s; stale means three missed periods.
DEFAULT_PERIOD = 10


def stale_before(state: dict, now: datetime) -> datetime:
    """Agents not heard from since this moment are stale: three polling periods ago."""
    period = state["pooling_interval"] or DEFAULT_PERIOD
    return now - timedelta(seconds=3 * period)


def agent_status(agent: Agent, state: dict, now=None) -> str:
    """in_sync, behind, stale or revoked, from the agent's last report and the current state."""
    if not agent.is_active:
        return "revoked"
    now = now or timezone.now()
    if agent.last_seen is None or agent.last_seen < stale_before(state, now):
        return "stale"
    if (agent.applied_version or 0) < target_version(agent, state):
        return "behind"
    return "in_sync"


def target_version(agent: Agent, state: dict) -> int:
    """The version the controller answers this agent now (a rollout may hold it back)."""
    return target_of(state, agent.pk, agent.labels)["version"]


def status_condition(status: str, state: dict, now) -> Q:
    """The database condition equal to `agent_status(...) == status`, for filters and counts."""
    revoked = Q(revoked_at__isnull=False)
    stale = ~revoked & (Q(last_seen__isnull=True) | Q(last_seen__lt=stale_before(state, now)))
    fresh = ~revoked & Q(last_seen__gte=stale_before(state, now))
    # An agent that never reported counts as version 0, as in agent_status; the bar is each
    # agent's own target, so during a rollout an agent whose wave has not started is in sync on
    # the previous version.
    behind = Q(LessThan(Coalesce("applied_version", 0), target_version_expression(state)))
    conditions = {
        "revoked": revoked,
        "stale": stale,
        "behind": fresh & behind,
        "in_sync": fresh & ~behind,
    }
    return conditions[status]


def filter_by_labels(agents: QuerySet, labels: dict[str, str]) -> QuerySet:
    """Agents carrying every one of `labels`. A key lookup rather than JSON containment, which
    SQLite (the embedded default) lacks. The key's text is cast to text: compared bare, Django
    reads the value as JSON on SQLite (`JSON_EXTRACT('canary', '$')`, malformed JSON)."""
    for index, (key, value) in enumerate(labels.items()):
        alias = f"_label_{index}"
        agents = agents.annotate(
            **{alias: Cast(KeyTextTransform(key, "labels"), TextField())}
        ).filter(**{alias: value})
    return agents


def filter_by_status(agents: QuerySet, status: str, state: dict, now) -> QuerySet:
    return agents.filter(status_condition(status, state, now))


def count_by_status(state: dict, now, agents: QuerySet | None = None) -> dict[str, int]:
    """How many agents (all, or of `agents`) are in each status, in one query."""
    agents = Agent.objects.all() if agents is None else agents
    return agents.aggregate(
        **{status: Count("pk", filter=status_condition(status, state, now)) for status in STATUSES}
    )
