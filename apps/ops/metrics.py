"""The controller's Prometheus instruments, correct across gunicorn's worker processes.

run_controller turns on prometheus_client's multiprocess mode (see serving.py): each process
then writes its counters to files in one directory, and GET /metrics, whichever process serves
it, adds them all up. The metric objects are made on first use, in the process that uses them,
so none is made in gunicorn's master before the mode is on.

What the database knows (the current version, agents by status) is read at scrape time instead,
by the collector next to the /metrics view (views.py), so every process reports the same
answer. This module imports no app, so that every app can count its events here.
"""

import threading
import time
from functools import cache
from types import SimpleNamespace

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.utils.decorators import sync_and_async_middleware
from prometheus_client import Counter, Gauge, Histogram, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Held watches last up to a minute, so the buckets reach past that.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 90)


_made = threading.Lock()


def instruments() -> SimpleNamespace:
    # Requests that arrive together in a fresh process (a burst of logins, say) would each make
    # the metrics and register them twice, which prometheus_client refuses: one makes them.
    with _made:
        return _instruments()


@cache
def _instruments() -> SimpleNamespace:
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
        streams=Gauge(
            "controller_streams_open",
            "Event streams (GET /config/stream) open right now.",
            multiprocess_mode="livesum",
        ),
        watch_limits=Counter(
            "controller_watch_limit_hits",
            "Watches and streams stopped by a cap, by cap: agent (the agent's oldest one ended, "
            "CONTROLLER_MAX_WATCHES_PER_AGENT) or process (a new one refused with 503, "
            "CONTROLLER_MAX_WATCHES).",
            ["limit"],
        ),
        head_timeouts=Counter(
            "controller_head_timeouts",
            "Connections closed because no whole request head arrived within "
            "CONTROLLER_HEADER_TIMEOUT.",
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
        notifications_refused=Counter(
            "controller_notifications_refused",
            "Messages on the notification channel refused for want of a valid seal (forged, "
            "or from a controller with another SECRET_KEY or of an older release).",
        ),
        heartbeats_recorded=Counter(
            "controller_heartbeats_recorded",
            "Agents' heartbeats written to the database in batches by the ASGI front.",
        ),
        heartbeat_hits_rejected=Counter(
            "controller_heartbeat_hits_rejected",
            "Hit counts of a heartbeat dropped (per agent and version), by reason: "
            "future_version (above the current version) or not_targeted (a rollout's new "
            "version, from an agent its waves have not reached).",
            ["reason"],
        ),
        heartbeat_labels_ignored=Counter(
            "controller_heartbeat_labels_ignored",
            "Heartbeats whose labels differed from the agent's stored ones and changed nothing: "
            "only an operator sets an agent's labels.",
        ),
        rollouts_halted=Counter(
            "controller_rollouts_halted",
            "Rollouts stopped by their new version's failure rate, by what happened: halted "
            "(every agent put back on the previous content) or paused (auto_rollback off).",
            ["state"],
        ),
        webhook_deliveries=Counter(
            "controller_webhook_deliveries",
            "Webhook delivery tries, by outcome: delivered (a 2xx answer), failed (anything "
            "else; retried later), abandoned (pending deliveries given up when their endpoint "
            "was disabled after three days of failures).",
            ["outcome"],
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


def multiprocess_mode() -> bool:
    return values.ValueClass is not values.MutexValue
