"""Labels a heartbeat reports: they change nothing.

An agent's labels pick whether it is a canary, so they are the operator's: bound at registration
by the registration token and changed afterwards only through set_agent_labels (the API's
PATCH /agents/{id}, the admin). An agent keeps sending its own in every heartbeat (an agent of
an earlier release does, and they show what it was started with); when they differ from the
stored ones they are counted (controller_heartbeat_labels_ignored_total) and logged, at most
once per agent every LOG_SECONDS, so a fleet started with the wrong --label values does not
flood the log.
"""

import logging
import threading
import time

from apps.agents.models import Agent
from apps.ops import metrics

logger = logging.getLogger(__name__)

LOG_SECONDS = 3600.0
_LOGGED_LIMIT = 50_000
_logged: dict[str, float] = {}
_lock = threading.Lock()
# The clock of the log's memory; a test replaces this one name.
clock = time.monotonic


def ignore_reported_labels(agent: Agent, labels: dict[str, str] | None) -> bool:
    """Count (and now and then log) labels a heartbeat reported that differ from the agent's
    stored ones; None (none reported) and the stored labels themselves are fine. Returns
    whether they differed."""
    if labels is None or labels == (agent.labels or {}):
        return False
    metrics.instruments().heartbeat_labels_ignored.inc()
    key, now = str(agent.pk), clock()
    with _lock:
        last = _logged.get(key)
        if last is not None and now - last < LOG_SECONDS:
            return True
        if len(_logged) >= _LOGGED_LIMIT:
            _logged.clear()
        _logged[key] = now
    logger.warning(
        "agent %s reported the labels %s, not its own %s: ignored (only an operator changes an "
        "agent's labels: PATCH /agents/%s); said once an hour per agent",
        key,
        _pairs(labels),
        _pairs(agent.labels or {}),
        key,
    )
    return True


def _pairs(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{key}={value}" for key, value in sorted(labels.items())) + "}"
