"""What each scope holds now: its current version, its rollout's state and its agents by status,
as GET /apps/{app}, the application's admin page and the dashboard's matrix show them."""

from django.db.models import Max
from django.utils import timezone

from apps.agents.models import Agent
from apps.agents.services import STATUSES, count_by_status
from apps.configs.models import ConfigVersion
from apps.configs.services import state_of
from apps.rollouts.models import Rollout
from apps.scopes.models import Application, Environment, Scope


def describe_scope(scope: Scope, now=None) -> dict:
    config = ConfigVersion.objects.filter(scope=scope).order_by("-version").first()
    rollout = (
        Rollout.objects.filter(scope=scope, version=config.version).first() if config else None
    )
    agents = Agent.objects.filter(scope=scope)
    return {
        "environment": scope.environment.name,
        "current_version": config.version if config else 0,
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
