"""The requests a process holds: one `Waiter` per held watch or stream, what woke it, and the
caps on how many are held (`HeldWatches`). The hub (hub.py) wakes them."""

import asyncio
import math
from typing import Literal

from apps.configs.asgi import settle
from apps.ops import metrics

# Why a held watch was woken: its agent's target changed (with the new answer), its agent was
# revoked, a newer watch of its agent replaced it, a pre-flight request came for its agent (with
# the request), the process is stopping; and the two its own timers set: its wait ended, or
# (a stream) the client hung up.
Outcome = Literal["changed", "revoked", "replaced", "preflight", "shutdown", "timeout", "gone"]
Woken = tuple[Outcome, dict | None]
TIMED_OUT: Woken = ("timeout", None)


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


class Deadlines:
    """Ends held waits when their time is up: the futures due in the same quarter of a second
    share one timer of the loop. A timer per held request cost about 600 bytes each (a third
    of what a held watch adds beyond the server's own objects), and ten thousand are held at
    once; a wait may now end up to a quarter of a second late, well within its jitter."""

    STEP = 0.25

    def __init__(self) -> None:
        # By (loop, slot): a loop only runs its own timers, and tests start several loops.
        self.due: dict[tuple[asyncio.AbstractEventLoop, int], set[asyncio.Future]] = {}

    def add(self, future: asyncio.Future, delay: float) -> tuple:
        """Settle `future` with TIMED_OUT once `delay` seconds have passed; returns the key
        that `discard` takes."""
        loop = future.get_loop()
        key = (loop, math.ceil((loop.time() + delay) / self.STEP))
        bucket = self.due.get(key)
        if bucket is None:
            bucket = self.due[key] = set()
            loop.call_at(key[1] * self.STEP, self._expire, key)
        bucket.add(future)
        return key

    def discard(self, key: tuple, future: asyncio.Future) -> None:
        """The wait ended otherwise: forget its future rather than keep it until its time."""
        bucket = self.due.get(key)
        if bucket is not None:
            bucket.discard(future)

    def _expire(self, key: tuple) -> None:
        for future in self.due.pop(key, ()):
            settle(future, TIMED_OUT)
