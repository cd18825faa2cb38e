"""The controller's Prometheus metrics, correct across gunicorn's worker processes.

run_controller turns on prometheus_client's multiprocess mode (see serving.py): each process
then writes its counters to files in one directory, and GET /metrics, whichever process serves
it, adds them all up. The metric objects are made on first use, in the process that uses them,
so none is made in gunicorn's master before the mode is on.

What the database knows (the current version, agents by status) is read at scrape time instead,
so every process reports the same answer.
"""

import logging
import time
from datetime import timedelta
from functools import cache
from types import SimpleNamespace

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.decorators import sync_and_async_middleware
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client import generate_latest as render_registry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Held watches last up to a minute, so the buckets reach past that.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 90)


@cache
def instruments() -> SimpleNamespace:
    return SimpleNamespace(
        requests=Counter(
            "controller_requests",
            "HTTP requests answered, by endpoint (URL pattern), method and status.",
            ["endpoint", "method", "status"],
        ),
        latency=Histogram(
            "controller_request_duration_seconds",
            "Time to answer a request, by endpoint; a held watch counts its whole wait.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
        ),
        watches=Gauge(
            "controller_watches_held",
            "Watch requests (GET /config/version with wait) held open right now.",
            multiprocess_mode="livesum",
        ),
        notifications_sent=Counter(
            "controller_notifications_sent",
            "Change notifications sent to the watch hubs, by type (config, revoked).",
            ["type"],
        ),
        notifications_received=Counter(
            "controller_notifications_received",
            "Change notifications the watch hubs of this controller received.",
        ),
    )


def observe_request(endpoint: str, method: str, status: int | str, seconds: float) -> None:
    metrics = instruments()
    metrics.requests.labels(endpoint, method, str(status)).inc()
    metrics.latency.labels(endpoint).observe(seconds)


def _endpoint_of(request) -> str:
    match = getattr(request, "resolver_match", None)
    if match is not None and match.route:
        return "/" + match.route
    if request.path.startswith("/" + settings.STATIC_URL.lstrip("/")):
        return "static"
    # Unknown paths share one label, so that scanners cannot grow the series without bound.
    return "unmatched"


@sync_and_async_middleware
def request_metrics_middleware(get_response):
    """Counts and times every request Django answers (the watch endpoint counts its own)."""
    if iscoroutinefunction(get_response):

        async def middleware(request):
            started = time.perf_counter()
            response = await get_response(request)
            observe_request(
                _endpoint_of(request),
                request.method,
                response.status_code,
                time.perf_counter() - started,
            )
            return response

    else:

        def middleware(request):
            started = time.perf_counter()
            response = get_response(request)
            observe_request(
                _endpoint_of(request),
                request.method,
                response.status_code,
                time.perf_counter() - started,
            )
            return response

    return middleware


class DatabaseStateCollector:
    """The current config version and the agents by status, read when Prometheus scrapes."""

    def collect(self):
        from apps.agents.models import Agent
        from apps.configs.services import get_current_state

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
        from apps.configs.services import get_current_state
        from apps.rollouts.models import Rollout
        from apps.rollouts.services import agents_by_target, get_latest_rollout

        try:
            rollout = get_latest_rollout()
            by_target = agents_by_target(get_current_state())
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


def multiprocess_mode() -> bool:
    return values.ValueClass is not values.MutexValue


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
