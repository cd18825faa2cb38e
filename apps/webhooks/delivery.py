"""The delivery job: sends the outbox's due rows, signed, and schedules the retries.

Run by the periodic jobs (apps/ops/jobs.py) of every controller process, each second and at
once after a commit that wrote outbox rows. A pass claims endpoints, not rows: the endpoints
whose oldest pending delivery is due, under `select_for_update(skip_locked=True)`, leased to
this pass for LEASE (renewed before each send). So one process at a time sends to an endpoint,
its deliveries go out in the order their events happened, and a pass of a process that died is
taken over once its lease has run out (that try may then be sent twice: at least once, never
lost; receivers drop repeats by webhook-id).

Each claimed endpoint gets a thread of a small pool: an endpoint that is slow to answer holds
its own thread for up to TIMEOUT_SECONDS and delays no other endpoint.
"""

import logging
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import NamedTuple
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import F, OuterRef, Subquery
from django.utils import timezone

from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from apps.ops import metrics
from apps.webhooks.models import Delivery, WebhookEndpoint
from apps.webhooks.signing import signature_header
from protocol.addresses import PRIVATE_KINDS, private_address_of

logger = logging.getLogger(__name__)

# The job's name in apps/ops/jobs.py, by which a commit wakes it (apps/ops/wake.py).
DELIVERY_JOB = "deliver webhooks"
TIMEOUT_SECONDS = 10
# The wait after the n-th failed try, give or take a fifth (jitter, so that the retries of many
# deliveries that failed together do not all arrive together); after the last, every 6 h.
RETRY_DELAYS = (5, 30, 120, 600, 3600)
RETRY_EVERY = 6 * 3600
JITTER = 0.2
# An endpoint whose tries have all failed for this long is disabled, and audited.
GIVE_UP_AFTER = timedelta(days=3)
# How long a pass holds an endpoint without renewing: longer than one send may take.
LEASE = timedelta(seconds=TIMEOUT_SECONDS + 10)
# Deliveries one pass sends to an endpoint before it lets the endpoint go (the next pass, a
# second later at most, takes it again): a backlog does not hold a thread for ever.
PASS_LIMIT = 100
USER_AGENT = "distributed-config-webhooks/1"
# The outcomes controller_webhook_deliveries_total counts.
OUTCOMES = ("delivered", "failed", "abandoned")


class Attempt(NamedTuple):
    """What one try got: the answer's status (None when there was no answer) and, when it
    failed, why."""

    status: int | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def retry_delay(attempts: int) -> float:
    """Seconds from the `attempts`-th failed try to the next one, with jitter."""
    base = RETRY_DELAYS[attempts - 1] if attempts <= len(RETRY_DELAYS) else RETRY_EVERY
    return base * random.uniform(1 - JITTER, 1 + JITTER)


# Claiming -------------------------------------------------------------------------------------


def claim_endpoints(now: datetime, limit: int) -> list[tuple[int, str]]:
    """Up to `limit` enabled endpoints whose oldest pending delivery is due and that no pass
    holds, leased to a new pass: [(endpoint id, the pass's token)]. Another process claiming at
    the same moment skips the rows locked here rather than wait for them."""
    if limit <= 0 or not _claimable(WebhookEndpoint.objects, now).exists():
        # Most seconds nothing is due: a plain read, no locking transaction (on SQLite, a
        # transaction takes the database's write lock).
        return []
    token = uuid.uuid4().hex
    with transaction.atomic():
        claimed = list(
            _claimable(WebhookEndpoint.objects.select_for_update(skip_locked=True), now)
            .order_by("id")
            .values_list("pk", flat=True)[:limit]
        )
        if claimed:
            WebhookEndpoint.objects.filter(pk__in=claimed).update(
                claimed_by=token, claimed_until=now + LEASE
            )
    return [(pk, token) for pk in claimed]


def _claimable(endpoints, now: datetime):
    oldest = Delivery.objects.filter(endpoint=OuterRef("pk"), state=Delivery.PENDING).order_by("id")
    return (
        endpoints.annotate(head_due=Subquery(oldest.values("next_attempt_at")[:1]))
        .filter(enabled=True, head_due__lte=now)
        .exclude(claimed_until__gt=now)
    )


def _renew(endpoint_id: int, token: str, now: datetime) -> bool:
    return bool(
        WebhookEndpoint.objects.filter(pk=endpoint_id, claimed_by=token, enabled=True).update(
            claimed_until=now + LEASE
        )
    )


def _release(endpoint_id: int, token: str) -> None:
    WebhookEndpoint.objects.filter(pk=endpoint_id, claimed_by=token).update(
        claimed_by="", claimed_until=None
    )


# Sending --------------------------------------------------------------------------------------


def secrets_in_use(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign now: the current one, and the one before a rotation for its
    grace period."""
    previous = endpoint.previous_secret
    expires = endpoint.previous_secret_expires_at
    if previous and expires is not None and now < expires:
        return [endpoint.secret, previous]
    return [endpoint.secret]


def refused_address(url: str) -> str | None:
    """Why `url` may not be called under WEBHOOKS_BLOCK_PRIVATE_URLS, or None. Checked when an
    endpoint is saved and again before each send: a name may resolve elsewhere by then."""
    if not settings.WEBHOOKS_BLOCK_PRIVATE_URLS:
        return None
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.hostname and private_address_of(parts.hostname, port):
        return (
            f"{parts.hostname} resolves to a private address ({PRIVATE_KINDS}), refused by "
            "WEBHOOKS_BLOCK_PRIVATE_URLS"
        )
    return None


def send(endpoint: WebhookEndpoint, delivery: Delivery) -> Attempt:
    """One try: POST the body, signed now, and wait up to TIMEOUT_SECONDS for the answer."""
    refused = refused_address(endpoint.url)
    if refused:
        return Attempt(None, refused)
    # The signing time is the wall clock's even when a test moves the job's clock: receivers
    # refuse a timestamp more than five minutes off theirs.
    signed_at = timezone.now()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(int(signed_at.timestamp())),
        "webhook-signature": signature_header(
            secrets_in_use(endpoint, signed_at), delivery.event_id, signed_at, delivery.body
        ),
    }
    session = requests.Session()
    # The endpoint as configured: no proxy from the environment (as the worker's upstreams),
    # and no redirect followed (a 3xx is not a 2xx, so it fails and is retried).
    session.trust_env = False
    try:
        with session.post(
            endpoint.url,
            data=delivery.body.encode(),
            headers=headers,
            timeout=TIMEOUT_SECONDS,
            allow_redirects=False,
            stream=True,
        ) as answer:
            status = answer.status_code
    except requests.Timeout:
        return Attempt(None, f"no answer within {TIMEOUT_SECONDS} s")
    except requests.RequestException as exc:
        # The kind only: requests' messages repeat the URL, whose path may be a credential.
        return Attempt(None, f"no answer: {type(exc).__name__}")
    finally:
        session.close()
    return Attempt(status, "" if 200 <= status < 300 else f"answered {status}")


def record(endpoint_id: int, delivery: Delivery, attempt: Attempt, now: datetime) -> bool:
    """Store what a try got and schedule the next one; disable the endpoint (audited) when it
    has failed for GIVE_UP_AFTER. Returns whether the delivery succeeded."""
    counts = metrics.instruments().webhook_deliveries
    tried = {
        "attempts": F("attempts") + 1,
        "last_attempt_at": now,
        "response_code": attempt.status,
        "last_error": attempt.error,
    }
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().filter(pk=endpoint_id).first()
        if endpoint is None:
            # Deleted during the try, with its deliveries: nothing left to record.
            return False
        if attempt.ok:
            Delivery.objects.filter(pk=delivery.pk).update(
                state=Delivery.DELIVERED, delivered_at=now, **tried
            )
            if endpoint.failing_since is not None:
                WebhookEndpoint.objects.filter(pk=endpoint_id).update(failing_since=None)
            counts.labels("delivered").inc()
            return True
        failing_since = endpoint.failing_since or now
        if now - failing_since < GIVE_UP_AFTER:
            Delivery.objects.filter(pk=delivery.pk).update(
                next_attempt_at=now + timedelta(seconds=retry_delay(delivery.attempts + 1)),
                **tried,
            )
            WebhookEndpoint.objects.filter(pk=endpoint_id).update(failing_since=failing_since)
            counts.labels("failed").inc()
            return False
        Delivery.objects.filter(pk=delivery.pk).update(**tried)
        _disable(endpoint, failing_since, attempt, now)
    counts.labels("failed").inc()
    return False


def _disable(endpoint: WebhookEndpoint, failing_since: datetime, attempt: Attempt, now) -> None:
    reason = (
        f"every try since {failing_since:%Y-%m-%d %H:%M:%S} UTC failed, the last: {attempt.error}"
    )[:500]
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        enabled=False, disabled_reason=reason, failing_since=failing_since
    )
    # Its backlog is given up: re-enabled days later, it would receive stale news.
    abandoned = Delivery.objects.filter(endpoint=endpoint, state=Delivery.PENDING).update(
        state=Delivery.FAILED, last_error="given up: the endpoint was disabled"
    )
    record_event(
        AuditEntry.WEBHOOK_DISABLED,
        target=str(endpoint)[:300],
        detail={"reason": reason, "failing_since": failing_since, "abandoned": abandoned},
    )
    metrics.instruments().webhook_deliveries.labels("abandoned").inc(abandoned)
    logger.warning("webhook #%s disabled: %s", endpoint.pk, reason)


def deliver_endpoint(
    endpoint_id: int, token: str, clock, stopping: threading.Event | None = None
) -> int:
    """One pass over a claimed endpoint: its due deliveries in order, until one fails (those
    after it wait behind it: order is kept), none is due, the claim is lost or `stopping` is
    set. `clock()` is the time now. Returns how many were delivered."""
    delivered = 0
    try:
        for _ in range(PASS_LIMIT):
            if stopping is not None and stopping.is_set():
                break
            if not _renew(endpoint_id, token, clock()):
                break
            endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id).first()
            if endpoint is None:
                break
            head = (
                Delivery.objects.filter(endpoint_id=endpoint_id, state=Delivery.PENDING)
                .order_by("id")
                .first()
            )
            if head is None or head.next_attempt_at > clock():
                break
            if not record(endpoint_id, head, send(endpoint, head), clock()):
                break
            delivered += 1
    finally:
        _release(endpoint_id, token)
    return delivered


def outbox_age_seconds() -> float:
    """Seconds since the oldest pending delivery was written (0 when none is): how far behind
    the outbox is, for /metrics."""
    oldest = (
        Delivery.objects.filter(state=Delivery.PENDING)
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    return max(0.0, (timezone.now() - oldest).total_seconds()) if oldest else 0.0


# The job --------------------------------------------------------------------------------------


class DeliveryPool:
    """The threads that send, WEBHOOKS_DELIVERY_THREADS of them per process, each serving one
    endpoint's pass at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.busy = 0
        # Set when the process's job runner stops: each pass ends after the try in progress
        # and lets its endpoint go, for another process to go on with at once.
        self.stopping = threading.Event()

    def free(self) -> int:
        with self._lock:
            return settings.WEBHOOKS_DELIVERY_THREADS - self.busy

    def submit(self, endpoint_id: int, token: str, clock) -> None:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    settings.WEBHOOKS_DELIVERY_THREADS, thread_name_prefix="webhooks"
                )
            self.busy += 1
            # A runner submits again: it runs (a test may stop one runner and start another).
            self.stopping.clear()
        self._executor.submit(self._run, endpoint_id, token, clock)

    def _run(self, endpoint_id: int, token: str, clock) -> None:
        try:
            close_old_connections()
            deliver_endpoint(endpoint_id, token, clock, self.stopping)
        except Exception:  # noqa: BLE001 - the lease runs out and another pass tries again
            logger.exception("webhook #%s: the delivery pass failed", endpoint_id)
        finally:
            connection.close()
            with self._lock:
                self.busy -= 1


POOL = DeliveryPool()


def stop_deliveries() -> None:
    """The job runner stops: the passes in progress end after their current try."""
    POOL.stopping.set()


def deliver_due(now: datetime | None = None, *, inline: bool = False) -> int:
    """One step of the job: claim the endpoints with due deliveries (as many as the pool has
    free threads) and start a pass for each; `inline` runs the passes here, one after the other
    (tests). `now` moves the job's clock (tests). Returns how many endpoints were claimed."""
    base = now or timezone.now()
    started = time.monotonic()

    def clock() -> datetime:
        return base + timedelta(seconds=time.monotonic() - started)

    claimed = claim_endpoints(base, PASS_LIMIT if inline else POOL.free())
    for endpoint_id, token in claimed:
        if inline:
            deliver_endpoint(endpoint_id, token, clock)
        else:
            POOL.submit(endpoint_id, token, clock)
    return len(claimed)
