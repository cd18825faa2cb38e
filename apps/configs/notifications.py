"""Change notifications: how a committed change reaches the requests watching for it.

With Redis, a change is published on one channel and every controller process, whichever took
the change, hears it on its single subscription. Without Redis, the process that made the change
wakes its own watchers, and the others find the change by re-reading the database each second.
"""

import logging
import threading

from django.conf import settings
from django.core.cache import cache

from apps.ops.metrics import instruments
from apps.ops.sealed import seal_message

logger = logging.getLogger(__name__)

# The watch hub of this process, when it runs one (under ASGI); set by the hub itself.
_local_listener = None
_listener_lock = threading.Lock()


def set_local_listener(listener) -> None:
    """Register a callable(message: dict) that is safe to call from any thread."""
    global _local_listener
    with _listener_lock:
        _local_listener = listener


def _deliver_locally(message: dict) -> None:
    listener = _local_listener
    if listener is not None:
        listener(message)


def _send(message: dict) -> None:
    instruments().notifications_sent.labels(message["type"]).inc()
    if settings.REDIS_URL:
        try:
            # Sealed: a hub acts only on what a holder of SECRET_KEY sent.
            cache.client.get_client(write=True).publish(
                settings.NOTIFY_CHANNEL, seal_message(message)
            )
            return
        except Exception as exc:  # noqa: BLE001 - any Redis failure: fall back, never fail
            logger.warning(
                "could not publish %s notification to Redis (%s); watchers will find the "
                "change by re-reading the database",
                message["type"],
                exc,
            )
    _deliver_locally(message)


def publish(state: dict) -> None:
    """Tell every watcher that the current state is now `state`."""
    _send({"type": "config", **state})


def publish_revocation(agent_id) -> None:
    """Tell every process to cut the watches held by a revoked agent."""
    _send({"type": "revoked", "agent_id": str(agent_id)})


def publish_labels(agent_id, labels: dict) -> None:
    """Tell every process an operator changed an agent's labels: a watch it holds is answered
    by them from now on."""
    _send({"type": "labels", "agent_id": str(agent_id), "labels": labels})


def publish_preflight(request: dict) -> None:
    """Hand a pre-flight request to every process, to pass on to the agents it names."""
    _send({"type": "preflight", **request})
