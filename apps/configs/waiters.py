"""The requests a process holds: one `Waiter` per held watch or stream, what woke it, and the
caps on how many are held (`HeldWatches`). The hub (hub.py) wakes them."""

import asyncio
from typing import Literal

from apps.ops import metrics

# Why a held watch was woken: its agent's target changed (with the new answer), its agent was
# revoked, a newer watch of its agent replaced it, a pre-flight request came for its agent (with
# the request), the process is stopping; and the two its own timers set: its wait ended, or
# (a stream) the client hung up.
Outcome = Literal["changed", "revoked", "replaced", "preflight", "shutdown", "timeout", "gone"]
Woken = tuple[Outcome, dict | None]


class Waiter:
    """One held request: woken with its agent's new answer, or with None when its agent is
    revoked (or when a state moved before its agent, and so its scope, was known)."""

    __slots__ = ("known", "agent_id", "scope_id", "labels", "future", "replaced")

    def __init__(self, known: int, future: "asyncio.Future[Woken]") -> None:
        self.known = known
        self.agent_id: str | None = None
        self.scope_id: int | None = None
        self.labels: dict = {}
        self.future = future
        # Set when a newer watch of the same agent took its place (HeldWatches).
        self.replaced = False


class HeldWatches:
    """The watches and streams this process holds, by agent, within two caps.

    Per agent (CONTROLLER_MAX_WATCHES_PER_AGENT): a new watch beyond the cap ends the agent's
    oldest one, which is woken with "replaced". The newest wins rather than being refused, so
    an agent that reconnects after its connection dropped is never turned away because the
    dead connection is still counted (a held long poll notices a hang-up only when it answers);
    a stolen token still holds no more than the cap. Per process (CONTROLLER_MAX_WATCHES):
    beyond it a new watch is refused, and the caller answers 503. A cap of 0 is no cap."""

    def __init__(self, per_agent: int, total: int) -> None:
        self.per_agent = per_agent
        self.total = total
        self.by_agent: dict[str, list[Waiter]] = {}
        self.count = 0

    def hold(self, waiter: Waiter) -> bool:
        """Count `waiter` as held; False (nothing counted) when the process is full."""
        if self.total and self.count >= self.total:
            metrics.instruments().watch_limits.labels("process").inc()
            return False
        held = self.by_agent.setdefault(waiter.agent_id, [])
        held.append(waiter)
        self.count += 1
        if self.per_agent and len(held) > self.per_agent:
            oldest = held.pop(0)
            self.count -= 1
            oldest.replaced = True
            if not oldest.future.done():
                oldest.future.set_result(("replaced", None))
            metrics.instruments().watch_limits.labels("agent").inc()
        return True

    def release(self, waiter: Waiter) -> None:
        """The watch ended (answered, hung up, replaced): it no longer counts."""
        held = self.by_agent.get(waiter.agent_id)
        if held is None or waiter not in held:
            return
        held.remove(waiter)
        self.count -= 1
        if not held:
            del self.by_agent[waiter.agent_id]
