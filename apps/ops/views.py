"""The probes (/healthz, /readyz) and the Prometheus scrape (/metrics), with the collector that
reads the database's state at scrape time."""

import logging
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.db.models import Count, Q
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client import generate_latest as render_registry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from apps.agents.models import Agent
from apps.configs.services import get_current_state
from apps.ops.metrics import CONTENT_TYPE, instruments, multiprocess_mode

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
    """The current config version and the agents by status, read when Prometheus scrapes."""

    def collect(self):
        try:
            version = get_current_state()["version"]
            seen_after = timezone.now() - timedelta(seconds=settings.METRICS_AGENT_STALE_SECONDS)
            live = Q(revoked_at__isnull=True)
            counts = Agent.objects.aggregate(
                active=Count("pk", filter=live & Q(last_seen__gte=seen_after)),
                stale=Count("pk", filter=live & Q(last_seen__lt=seen_after)),
                never_seen=Count("pk", filter=live & Q(last_seen__isnull=True)),
                revoked=Count("pk", filter=Q(revoked_at__isnull=False)),
            )
        except DatabaseError as exc:
            logger.warning("metrics: database unavailable: %s", exc)
            yield GaugeMetricFamily(
                "controller_database_up", "1 when the database answered the scrape.", value=0
            )
            return
        yield GaugeMetricFamily(
            "controller_database_up", "1 when the database answered the scrape.", value=1
        )
        yield GaugeMetricFamily(
            "controller_config_version",
            "The current configuration version; 0 before the first one.",
            value=version,
        )
        agents = GaugeMetricFamily(
            "controller_agents",
            "Registered agents by status: active (heard from within "
            "METRICS_AGENT_STALE_SECONDS), stale, never_seen, revoked.",
            labels=["status"],
        )
        for status, count in counts.items():
            agents.add_metric([status], count)
        yield agents
        yield from self.collect_rollout()

    def collect_rollout(self):
        from apps.rollouts.health import health_of
        from apps.rollouts.models import Rollout
        from apps.rollouts.status import agents_by_target, get_latest_rollout

        try:
            rollout = get_latest_rollout()
            by_target = agents_by_target(get_current_state())
            health = health_of(rollout) if rollout else None
        except DatabaseError as exc:
            logger.warning("metrics: database unavailable: %s", exc)
            return
        states = GaugeMetricFamily(
            "controller_rollout_state",
            "1 for the state of the current or last rollout, 0 for the others; all 0 before "
            "the first rollout.",
            labels=["state"],
        )
        for state, _ in Rollout.STATES:
            states.add_metric([state], int(rollout is not None and rollout.state == state))
        yield states
        yield GaugeMetricFamily(
            "controller_rollout_version",
            "The version the current or last rollout rolls out; 0 before the first.",
            value=rollout.version if rollout else 0,
        )
        yield GaugeMetricFamily(
            "controller_rollout_wave",
            "The rollout's newest started wave: 0 the canaries, k the k-th wave.",
            value=rollout.wave if rollout else 0,
        )
        targets = GaugeMetricFamily(
            "controller_agents_by_target_version",
            "Agents not revoked, by the version the controller answers them now.",
            labels=["version"],
        )
        for version, count in sorted(by_target.items()):
            targets.add_metric([str(version)], count)
        yield targets
        hits = GaugeMetricFamily(
            "controller_rollout_hits",
            "The hits the health gate judges, of the rollout's new version (since the last "
            "resume) and of its previous version, by outcome (ok, failed).",
            labels=["version", "outcome"],
        )
        if health is not None:
            for which, counted in zip(("new", "previous"), health, strict=True):
                hits.add_metric([which, "ok"], counted.ok)
                hits.add_metric([which, "failed"], counted.failed)
        yield hits


def render() -> bytes:
    """The whole exposition: this process (or all processes, in multiprocess mode) and the
    database's state."""
    if multiprocess_mode():
        counted = CollectorRegistry()
        MultiProcessCollector(counted)
    else:
        counted = REGISTRY
    instruments()  # so that the metrics show (at zero) before their first event
    state = CollectorRegistry(auto_describe=False)
    state.register(DatabaseStateCollector())
    return render_registry(counted) + render_registry(state)
