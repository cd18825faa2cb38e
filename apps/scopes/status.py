"""What each scope holds now: its current version, its rollout's state and its agents by status,
as GET /apps/{app}, the application's admin page and the dashboard's matrix show them; and all
of one scope, as its own admin page shows it."""

from django.db.models import Case, IntegerField, Max, Value, When
from django.utils import timezone

from apps.agents.models import Agent
from apps.agents.services import STATUSES, agent_status, count_by_status, status_condition
from apps.changes.models import ChangeRequest, ScheduledChange
from apps.configs.models import ConfigVersion
from apps.configs.services import diff_against_previous, state_of, with_previous
from apps.rollouts.models import Rollout
from apps.rollouts.status import get_latest_rollout, measure, wave_starts
from apps.scopes.models import Application, Environment, Scope

# How much of each list a scope's page shows; each links to the whole list, filtered by scope.
PAGE_VERSIONS = 20
PAGE_CHANGES = 20
PAGE_AGENTS = 50


def describe_scope(scope: Scope, now=None) -> dict:
    config = ConfigVersion.objects.filter(scope=scope).order_by("-version").first()
    rollout = (
        Rollout.objects.filter(scope=scope, version=config.version).first() if config else None
    )
    agents = Agent.objects.filter(scope=scope)
    return {
        "environment": scope.environment.name,
        "current_version": config.version if config else 0,
        "config_url": config.config_url if config else None,
        "pooling_interval": config.pooling_interval if config else None,
        "rollout_state": rollout.state if rollout else None,
        "agents": count_by_status(state_of(config, scope.pk), now or timezone.now(), agents),
    }


def describe_application(application: Application) -> list[dict]:
    """Each environment's scope of the application, in the environments' order (one not made
    yet, as for an environment made before the application existed, is empty)."""
    now = timezone.now()
    scopes = {
        scope.environment_id: scope for scope in Scope.objects.filter(application=application)
    }
    described = []
    for environment in Environment.objects.order_by("order", "name"):
        scope = scopes.get(environment.pk)
        if scope is None:
            empty = dict.fromkeys(STATUSES, 0)
            described.append(
                {
                    "environment": environment.name,
                    "current_version": 0,
                    "config_url": None,
                    "pooling_interval": None,
                    "rollout_state": None,
                    "agents": empty,
                }
            )
            continue
        scope.application, scope.environment = application, environment
        described.append(describe_scope(scope, now))
    return described


def matrix(now=None) -> dict:
    """The dashboard's matrix: applications down, environments across, each cell a scope's
    current version, rollout state and agents in sync out of those not revoked. Only the
    scopes holding a version or an agent are measured; the others are empty at no cost."""
    now = now or timezone.now()
    environments = list(Environment.objects.order_by("order", "name"))
    scopes = {(scope.application_id, scope.environment_id): scope for scope in Scope.objects.all()}
    newest = dict(
        ConfigVersion.objects.values("scope")
        .annotate(newest=Max("version"))
        .values_list("scope", "newest")
    )
    with_agents = set(Agent.objects.values_list("scope", flat=True).distinct())
    rows = []
    for application in Application.objects.order_by("name"):
        cells = []
        for environment in environments:
            scope = scopes.get((application.pk, environment.pk))
            cell = {"scope": scope, "environment": environment.name}
            cell.update(current_version=0, rollout_state=None)
            cell.update(in_sync=0, total=0)
            if scope is not None and (scope.pk in newest or scope.pk in with_agents):
                scope.application, scope.environment = application, environment
                described = describe_scope(scope, now)
                agents = described["agents"]
                cell.update(
                    current_version=described["current_version"],
                    rollout_state=described["rollout_state"],
                    in_sync=agents["in_sync"],
                    total=agents["in_sync"] + agents["behind"] + agents["stale"],
                )
            cells.append(cell)
        rows.append({"application": application, "cells": cells})
    return {"environments": environments, "rows": rows}


def describe_scope_page(scope: Scope, now=None) -> dict:
    """A scope's admin page: its newest versions, each with what it changed from the one before
    (the first is the current config); its latest rollout with where it stands among the agents
    and its waves' starts; its change requests, pending first; its scheduled changes still to
    come; its agents by status, and the
    first of them, those that need a look (behind, then stale) first. The number of queries is
    the same however long the history or large the fleet."""
    now = now or timezone.now()
    versions = list(
        with_previous(ConfigVersion.objects.filter(scope=scope))
        .select_related("created_by")
        .order_by("-version")[:PAGE_VERSIONS]
    )
    for version in versions:
        version.diff = diff_against_previous(version)
    config = versions[0] if versions else None
    state = state_of(config, scope.pk)
    agents = Agent.objects.filter(scope=scope)
    rollout = get_latest_rollout(scope.pk)
    progress = waves = None
    if rollout is not None:
        rollout.scope = scope  # its names, for the waves' audit entries
        progress = measure(rollout, now=now)
        waves = wave_starts(rollout)
    pending_first = Case(
        When(state=ChangeRequest.PENDING, then=Value(0)),
        default=Value(1),
        output_field=IntegerField(),
    )
    changes = (
        ChangeRequest.objects.filter(scope=scope)
        .select_related("author")
        .order_by(pending_first, "-created_at", "-id")[:PAGE_CHANGES]
    )
    attention = Case(
        *(
            When(status_condition(status, state, now), then=Value(rank))
            for rank, status in enumerate(("behind", "stale", "in_sync"))
        ),
        default=Value(3),
        output_field=IntegerField(),
    )
    listed = list(
        agents.annotate(attention=attention).order_by("attention", "name", "created_at")[
            :PAGE_AGENTS
        ]
    )
    for agent in listed:
        agent.status = agent_status(agent, state, now)
    counts = count_by_status(state, now, agents)
    return {
        "config": config,
        "versions": versions,
        "rollout": rollout,
        "progress": progress,
        "waves": waves,
        "changes": list(changes),
        # What will be published here next, soonest first.
        "scheduled": list(
            ScheduledChange.objects.filter(scope=scope, state=ScheduledChange.SCHEDULED)
            .select_related("author", "change_request")
            .order_by("publish_at", "id")[:PAGE_CHANGES]
        ),
        "agent_counts": counts,
        "agent_total": sum(counts.values()),
        "agents": listed,
        "limits": {"versions": PAGE_VERSIONS, "changes": PAGE_CHANGES, "agents": PAGE_AGENTS},
    }
