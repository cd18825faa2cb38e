"""The probes (/healthz, /readyz) and the Prometheus scrape (/metrics), with the collector that
reads the database's state at scrape time."""

import logging
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.db.models import Count, Max, Q
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client import generate_latest as render_registry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from apps.agents.models import Agent
from apps.configs.models import ConfigVersion
from apps.configs.services import get_current_state
from apps.ops.metrics import CONTENT_TYPE, instruments, multiprocess_mode
from apps.rollouts.health import health_of
from apps.rollouts.models import Rollout
from apps.rollouts.status import agents_by_target
from apps.scopes.models import Scope
from apps.webhooks.delivery import OUTCOMES, outbox_age_seconds

# The agents' statuses the collector counts, in the order they are reported.
STATUS_NAMES = ("active", "stale", "never_seen", "revoked")

logger = logging.getLogger(__name__)


@require_GET
def healthz(request):
    """The process is up; depends on nothing."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request):
    """Ready to serve: the database answers and, when configured, Redis too."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except DatabaseError as exc:
        logger.warning("readyz: database unavailable: %s", exc)
        checks["database"] = "unavailable"
    if settings.REDIS_URL:
        try:
            cache.client.get_client().ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any client error means not ready
            logger.warning("readyz: redis unavailable: %s", exc)
            checks["redis"] = "unavailable"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", **checks}, status=200 if ready else 503
    )


@require_GET
def metrics(request):
    """Prometheus text exposition; protect it at the network level, like the seed's ports."""
    return HttpResponse(render(), content_type=CONTENT_TYPE)


class DatabaseStateCollector:
    """Each scope's current config version, agents by status and rollout, read when Prometheus
    scrapes, labelled by application and environment (a bounded set: the operators make them;
    no agent is ever a label)."""

    def collect(self):
        try:
            scopes = read_scopes()
            outbox_age = outbox_age_seconds()
        except DatabaseError as exc:
            logger.warning("metrics: database unavailable: %s", exc)
            yield GaugeMetricFamily(
                "controller_database_up", "1 when the database answered the scrape.", value=0
            )
            return
        yield GaugeMetricFamily(
            "controller_database_up", "1 when the database answered the scrape.", value=1
        )
        names = ["application", "environment"]
        version = GaugeMetricFamily(
            "controller_config_version",
            "Each scope's current configuration version; 0 before the first one.",
            labels=names,
        )
        agents = GaugeMetricFamily(
            "controller_agents",
            "Registered agents of each scope by status: active (heard from within "
            "METRICS_AGENT_STALE_SECONDS), stale, never_seen, revoked.",
            labels=[*names, "status"],
        )
        states = GaugeMetricFamily(
            "controller_rollout_state",
            "1 for the state of each scope's current or last rollout, 0 for the others; all 0 "
            "before its first rollout.",
            labels=[*names, "state"],
        )
        rollout_version = GaugeMetricFamily(
            "controller_rollout_version",
            "The version each scope's current or last rollout rolls out; 0 before the first.",
            labels=names,
        )
        wave = GaugeMetricFamily(
            "controller_rollout_wave",
            "Each scope's rollout's newest started wave: 0 the canaries, k the k-th wave.",
            labels=names,
        )
        wave_started = GaugeMetricFamily(
            "controller_rollout_wave_started_timestamp_seconds",
            "When each scope's rollout's newest wave started (Unix time); 0 before the first.",
            labels=names,
        )
        wave_allowed = GaugeMetricFamily(
            "controller_rollout_wave_allowed_seconds",
            "How long each scope's rollout's plan gives a wave from its start: the bake time "
            "plus the wave timeout, or plus WAVE_ALLOWED_WITHOUT_TIMEOUT seconds when the plan "
            "sets none; 0 before the first rollout.",
            labels=names,
        )
        targets = GaugeMetricFamily(
            "controller_agents_by_target_version",
            "Agents not revoked of each scope, by the version the controller answers them now.",
            labels=[*names, "version"],
        )
        hits = GaugeMetricFamily(
            "controller_rollout_hits",
            "The hits the health gate judges, of each scope's rollout's new version (since the "
            "last resume) and of its previous version, by outcome (ok, failed).",
            labels=[*names, "version", "outcome"],
        )
        for scope in scopes:
            named = [scope["application"], scope["environment"]]
            version.add_metric(named, scope["version"])
            for status, count in scope["agents"].items():
                agents.add_metric([*named, status], count)
            rollout = scope["rollout"]
            for state, _ in Rollout.STATES:
                running = int(rollout is not None and rollout.state == state)
                states.add_metric([*named, state], running)
            rollout_version.add_metric(named, rollout.version if rollout else 0)
            wave.add_metric(named, rollout.wave if rollout else 0)
            wave_started.add_metric(named, rollout.wave_started_at.timestamp() if rollout else 0)
            wave_allowed.add_metric(named, wave_allowed_seconds(rollout) if rollout else 0)
            for target, count in sorted(scope["targets"].items()):
                targets.add_metric([*named, str(target)], count)
            if scope["health"] is not None:
                for which, counted in zip(("new", "previous"), scope["health"], strict=True):
                    hits.add_metric([*named, which, "ok"], counted.ok)
                    hits.add_metric([*named, which, "failed"], counted.failed)
        yield from (version, agents, states, rollout_version, wave, wave_started, wave_allowed)
        yield from (targets, hits)
        yield GaugeMetricFamily(
            "controller_webhook_outbox_age_seconds",
            "Seconds since the oldest webhook delivery still pending was written; 0 when none is.",
            value=outbox_age,
        )


# A plan without a wave timeout waits as long as its agents take; for the alert on a rollout
# stuck in a wave (deploy/prometheus/alerts.yml) such a wave is given an hour after its bake.
WAVE_ALLOWED_WITHOUT_TIMEOUT = 3600


def wave_allowed_seconds(rollout: Rollout) -> int:
    """How long the rollout's plan gives one wave from its start."""
    return rollout.bake_seconds + (rollout.wave_timeout_seconds or WAVE_ALLOWED_WITHOUT_TIMEOUT)


def read_scopes() -> list[dict]:
    """What the collector reports of every scope, in a few queries whatever the fleet's size:
    one each for the versions, the agents' counts and the latest rollouts, and per scope with
    a rollout its health and, while it splits the fleet, its agents by target."""
    seen_after = timezone.now() - timedelta(seconds=settings.METRICS_AGENT_STALE_SECONDS)
    live = Q(revoked_at__isnull=True)
    versions = dict(
        ConfigVersion.objects.values("scope")
        .annotate(newest=Max("version"))
        .values_list("scope", "newest")
    )
    counts = {
        row.pop("scope"): row
        for row in Agent.objects.values("scope").annotate(
            active=Count("pk", filter=live & Q(last_seen__gte=seen_after)),
            stale=Count("pk", filter=live & Q(last_seen__lt=seen_after)),
            never_seen=Count("pk", filter=live & Q(last_seen__isnull=True)),
            revoked=Count("pk", filter=Q(revoked_at__isnull=False)),
        )
    }
    latest = Rollout.objects.values("scope").annotate(newest=Max("version"))
    wanted = Q(pk__in=[])
    for row in latest:
        wanted |= Q(scope_id=row["scope"], version=row["newest"])
    rollouts = {rollout.scope_id: rollout for rollout in Rollout.objects.filter(wanted)}
    described = []
    for scope in Scope.objects.select_related("application", "environment").order_by("pk"):
        agents = counts.get(scope.pk, dict.fromkeys(STATUS_NAMES, 0))
        rollout = rollouts.get(scope.pk)
        current = versions.get(scope.pk, 0)
        if rollout is not None and rollout.state in Rollout.SPLIT_STATES:
            by_target = agents_by_target(get_current_state(scope.pk))
        else:
            alive = agents["active"] + agents["stale"] + agents["never_seen"]
            by_target = {current: alive} if alive else {}
        described.append(
            {
                "application": scope.application.name,
                "environment": scope.environment.name,
                "version": current,
                "agents": agents,
                "rollout": rollout,
                "targets": by_target,
                "health": health_of(rollout) if rollout else None,
            }
        )
    return described


def render() -> bytes:
    """The whole exposition: this process (or all processes, in multiprocess mode) and the
    database's state."""
    if multiprocess_mode():
        counted = CollectorRegistry()
        MultiProcessCollector(counted)
    else:
        counted = REGISTRY
    made = instruments()  # so that the metrics show (at zero) before their first event
    for outcome in OUTCOMES:
        made.webhook_deliveries.labels(outcome)
    state = CollectorRegistry(auto_describe=False)
    state.register(DatabaseStateCollector())
    return render_registry(counted) + render_registry(state)
