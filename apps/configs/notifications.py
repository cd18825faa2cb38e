"""Change notifications: how a committed change reaches the requests watching for it."""

import logging

logger = logging.getLogger(__name__)


def publish(state: dict) -> None:
    """Tell every watcher that the current state is now `state`."""
    logger.debug("notify %s", state)
