"""Exponential backoff with full jitter, one instance per target."""

import random
from collections.abc import Callable


class Backoff:
    """Delay n (from 0) is uniform in [0, min(cap, base * 2**n)]; a success resets n.

    Full jitter spreads the retries of many agents after a shared outage, so they do not return
    to the controller at the same instant.
    """

    def __init__(
        self, *, base: float = 1.0, cap: float = 60.0, rand: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self.rand = rand
        self.failures = 0

    def ceiling(self) -> float:
        # min() before the power would overflow after a long outage.
        return min(self.cap, self.base * 2 ** min(self.failures, 62))

    def next_delay(self) -> float:
        """Record a failure and return how long to wait before the next attempt."""
        delay = self.rand() * self.ceiling()
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
