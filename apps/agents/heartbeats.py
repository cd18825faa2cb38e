"""Heartbeats at fleet scale: checked in the event loop, recorded in batches.

After a change, every agent reports within the same second, and at a 10 s interval a fleet of
10,000 sends 1,000 reports a second. One UPDATE per report through Django's request path managed
about 360 a second on two cores, so the ASGI front (apps/configs/front.py) takes POST
/agent/heartbeat itself: the body is checked here without DRF, the token is looked up in the
process's memory (or in one query for all the tokens missing from it), and the report waits in
memory for the next batch, written as one statement every HEARTBEAT_FLUSH_SECONDS or
HEARTBEAT_BATCH_SIZE reports. A clean shutdown writes what is pending; a crash loses at most one
batch window, which each agent's next heartbeat repairs.
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

from django.core.validators import URLValidator
from django.db import DatabaseError
from django.utils import timezone

from apps.agents.auth import forget_last_seen
from apps.agents.models import Agent
from apps.ops import metrics
from protocol.labels import InvalidLabels, check_labels

logger = logging.getLogger(__name__)

MAX_VERSION = 2**31 - 1  # applied_version is a PostgreSQL integer column
MAX_WORKERS = 100
MAX_URL_LENGTH = 2048
# A heartbeat reports hits for at most this many versions, each count at most MAX_HITS: far more
# than a worker serves between two heartbeats, and the totals stay far from the column's limit.
MAX_HIT_VERSIONS = 100
MAX_HITS = 10**9


class InvalidHeartbeat(Exception):
    """A heartbeat body that breaks the rules; `errors` is keyed by field, as DRF's are."""

    def __init__(self, errors: dict) -> None:
        super().__init__(errors)
        self.errors = errors


def _whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@functools.lru_cache(maxsize=4096)
def _valid_url(url: str) -> bool:
    # A fleet reports the same few worker URLs over and over: each is checked once.
    try:
        URLValidator()(url)
    except Exception:  # noqa: BLE001 - ValidationError, or a value the validator chokes on
        return False
    return True


def _check_worker(item) -> dict:
    if not isinstance(item, dict):
        raise InvalidHeartbeat({"non_field_errors": ["Must be an object."]})
    errors: dict[str, list[str]] = {}
    url, ok, version = item.get("url"), item.get("ok"), item.get("version", ...)
    if not isinstance(url, str):
        errors["url"] = ["This field is required and must be a string."]
    elif len(url) > MAX_URL_LENGTH:
        errors["url"] = [f"Ensure this field has no more than {MAX_URL_LENGTH} characters."]
    elif not _valid_url(url):
        errors["url"] = ["Enter a valid URL."]
    if not isinstance(ok, bool):
        errors["ok"] = ["This field is required and must be true or false."]
    if version is ...:
        errors["version"] = ["This field is required."]
    elif version is not None and (not _whole_number(version) or version < 0):
        errors["version"] = ["Must be a whole number of at least 0, or null."]
    if errors:
        raise InvalidHeartbeat(errors)
    return {"url": url, "ok": ok, "version": version}


def _check_hit(item) -> dict:
    if not isinstance(item, dict):
        raise InvalidHeartbeat({"non_field_errors": ["Must be an object."]})
    errors: dict[str, list[str]] = {}
    version = item.get("version")
    if not _whole_number(version) or not 1 <= version <= MAX_VERSION:
        errors["version"] = [f"This field is required: a whole number from 1 to {MAX_VERSION}."]
    for name in ("ok", "failed"):
        count = item.get(name)
        if not _whole_number(count) or not 0 <= count <= MAX_HITS:
            errors[name] = [f"This field is required: a whole number from 0 to {MAX_HITS}."]
    if errors:
        raise InvalidHeartbeat(errors)
    return {"version": version, "ok": item["ok"], "failed": item["failed"]}


def _check_list(items, check, limit: int) -> list[dict]:
    """Each item of a list field checked by `check`; InvalidHeartbeat with the errors of the
    field (per item, as DRF gives them) otherwise."""
    if not isinstance(items, list):
        raise InvalidHeartbeat(["Must be a list."])
    if len(items) > limit:
        raise InvalidHeartbeat([f"Ensure this field has no more than {limit} elements."])
    checked, per_item = [], []
    for item in items:
        try:
            checked.append(check(item))
            per_item.append({})
        except InvalidHeartbeat as exc:
            per_item.append(exc.errors)
    if any(per_item):
        raise InvalidHeartbeat(per_item)
    return checked


def merge_hits(*reports: list[dict]) -> list[dict]:
    """Hits of several reports of one agent as one: the counts of each version added up."""
    totals: dict[int, list[int]] = {}
    for hits in reports:
        for item in hits:
            total = totals.setdefault(item["version"], [0, 0])
            total[0] += item["ok"]
            total[1] += item["failed"]
    return [
        {"version": version, "ok": ok, "failed": failed}
        for version, (ok, failed) in sorted(totals.items())
    ]


def check_heartbeat(data) -> dict:
    """{"applied_version", "workers", "hits", "labels"} from a decoded heartbeat body, or
    InvalidHeartbeat.

    The one statement of the rules: the API view's serializer calls it too. Values must have
    their JSON types (a version is a number, `ok` is true or false), as the agent sends them."""
    if not isinstance(data, dict):
        raise InvalidHeartbeat({"non_field_errors": ["The body must be a JSON object."]})
    errors: dict = {}
    applied = data.get("applied_version", ...)
    if applied is ...:
        errors["applied_version"] = ["This field is required."]
    elif applied is not None and (not _whole_number(applied) or not 0 <= applied <= MAX_VERSION):
        errors["applied_version"] = [f"Must be a whole number from 0 to {MAX_VERSION}, or null."]
    checked: list[dict] = []
    if "workers" not in data:
        errors["workers"] = ["This field is required."]
    else:
        try:
            checked = _check_list(data["workers"], _check_worker, MAX_WORKERS)
        except InvalidHeartbeat as exc:
            errors["workers"] = exc.errors
    hits: list[dict] = []
    if "hits" in data:
        # Optional: an agent of an earlier release sends none.
        try:
            hits = _check_list(data["hits"], _check_hit, MAX_HIT_VERSIONS)
        except InvalidHeartbeat as exc:
            errors["hits"] = exc.errors
    # Optional, and they change nothing (apps/agents/labels.py): checked so that a body the rules
    # refuse is refused whole, as before.
    labels = data.get("labels")
    if labels is not None:
        try:
            labels = check_labels(labels)
        except InvalidLabels as exc:
            errors["labels"] = [str(exc)]
    if errors:
        raise InvalidHeartbeat(errors)
    return {"applied_version": applied, "workers": checked, "hits": hits, "labels": labels}


# A report waiting for its batch: (seen at, applied_version, workers, hits). Its labels are not
# kept: they change nothing (apps/agents/labels.py).
Report = tuple


class HeartbeatRecorder:
    """This process's reports waiting to be written, and the task that writes them in batches.

    `write(batch)` stores {agent_id: Report} in one statement and `lookup(digests)` returns
    {digest: Agent or None} in one query; `touch(agent_ids)` writes the last_seen of agents
    whose contact was noted (note_seen) in one statement; all run off the event loop (the ASGI
    front passes them in, wrapped for a worker thread with a database connection)."""

    def __init__(
        self,
        *,
        write: Callable[[dict], Awaitable[None]],
        lookup: Callable[[list[str]], Awaitable[dict]],
        touch: Callable[[list[str]], Awaitable[None]],
        flush_seconds: float,
        batch_size: int,
    ) -> None:
        self.write = write
        self.lookup = lookup
        self.touch = touch
        # Agents whose contact is to be written as their last_seen, with the next batch.
        self.seen: set[str] = set()
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        # The latest report per agent: two reports in one window are one write (their hits,
        # each counted since the report before, are added up).
        self.pending: dict[str, Report] = {}
        self.recorded = 0
        self._lookups: dict[str, asyncio.Future] = {}
        self._lookup_task: asyncio.Task | None = None
        self._writing: asyncio.Lock | None = None
        self._timer: asyncio.Task | None = None
        self._early: asyncio.Task | None = None

    # Life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._timer is None:
            self._writing = asyncio.Lock()
            self._timer = asyncio.create_task(self._every_window())

    async def stop(self) -> None:
        """Stop the timer and write everything still pending (a clean shutdown loses nothing)."""
        for task in (self._timer, self._early):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._timer = self._early = None
        await self.flush()

    # Reports ----------------------------------------------------------------------------

    def add(self, agent_id: str, report: dict) -> None:
        earlier = self.pending.get(agent_id)
        hits = report.get("hits", [])
        if earlier is not None and earlier[3]:
            hits = merge_hits(earlier[3], hits)
        self.pending[agent_id] = (
            timezone.now(),
            report["applied_version"],
            report["workers"],
            hits,
        )
        if len(self.pending) >= self.batch_size and self._early is None and self._timer:
            # A full batch does not wait for the window to end.
            self._early = asyncio.create_task(self._flush_early())

    def note_seen(self, agent_id: str) -> None:
        """The agent called: its last_seen is written with the next batch (within
        flush_seconds), together with every other one's."""
        self.seen.add(agent_id)

    async def _every_window(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    async def _flush_early(self) -> None:
        try:
            await self.flush()
        finally:
            self._early = None

    async def flush(self) -> None:
        """Write what is pending, one statement per batch of at most batch_size reports."""
        if self._writing is None:
            self._writing = asyncio.Lock()
        async with self._writing:
            while self.pending:
                batch = dict(self.pending)
                if len(batch) > self.batch_size:
                    batch = dict(list(batch.items())[: self.batch_size])
                for agent_id in batch:
                    del self.pending[agent_id]
                try:
                    await self.write(batch)
                except DatabaseError as exc:
                    self._keep(batch)
                    logger.error(
                        "could not record %s heartbeats (%s); retrying in %.1f s",
                        len(batch),
                        exc,
                        self.flush_seconds,
                    )
                    return
                except asyncio.CancelledError:
                    # Stopping: the batch is written again by the final flush.
                    self._keep(batch)
                    raise
                self.recorded += len(batch)
                metrics.instruments().heartbeats_recorded.inc(len(batch))
            while self.seen:
                seen = list(self.seen)[: self.batch_size]
                self.seen.difference_update(seen)
                try:
                    await self.touch(seen)
                except DatabaseError as exc:
                    # Dropped, not retried: the agent's next contact is written again.
                    logger.warning("could not record %s agents' last contact: %s", len(seen), exc)
                    forget_last_seen(seen)
                    return

    def _keep(self, batch: dict) -> None:
        # Back in the queue, unless a newer report of the same agent arrived meanwhile.
        for agent_id, report in batch.items():
            newer = self.pending.get(agent_id)
            if newer is None:
                self.pending[agent_id] = report
            elif report[3]:
                # The newer report wins, and the hits that were not written go with it.
                self.pending[agent_id] = (
                    *newer[:3],
                    merge_hits(report[3], newer[3]),
                )

    # Agents -----------------------------------------------------------------------------

    async def find(self, digest: str) -> Agent | None:
        """The agent whose token has this digest (active or not), looked up together with every
        other digest missing from the process's memory at the same moment."""
        future = self._lookups.get(digest)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._lookups[digest] = future
            if self._lookup_task is None:
                self._lookup_task = asyncio.create_task(self._look_up())
        return await future

    async def _look_up(self) -> None:
        try:
            while self._lookups:
                waiting, self._lookups = self._lookups, {}
                try:
                    found = await self.lookup(list(waiting))
                except Exception as exc:  # noqa: BLE001 - handed to every request waiting
                    for future in waiting.values():
                        if not future.done():  # its request may have been cancelled
                            future.set_exception(exc)
                    continue
                for digest, future in waiting.items():
                    if not future.done():
                        future.set_result(found.get(digest))
        finally:
            self._lookup_task = None
