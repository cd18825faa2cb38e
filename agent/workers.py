"""The agent's side of its workers: what it knows of each, bringing each in step with the
config the agent holds, the hits it reports for them, and a pre-flight run on one of them.

AgentDaemon (daemon.py) is the one user of WorkerSync; the controller's side of the loop stays
there.
"""

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.backoff import Backoff
from agent.client import (
    ControllerClient,
    ControllerUnavailable,
    PushRefused,
    TokenRefused,
    WorkerClient,
    WorkerUnavailable,
)
from agent.state import StateDir
from protocol.config import CONFIG_FIELDS

logger = logging.getLogger("agent")


@dataclass
class WorkerState:
    """What the agent knows of one worker."""

    client: WorkerClient
    backoff: Backoff
    due: float = 0.0  # 0: checked on every cycle; otherwise the time of the next retry
    ok: bool = False
    version: int | None = None
    ahead_logged: bool = field(default=False)
    # The worker's hit counts as last read, and as counted in the last delivered heartbeat.
    hits: dict[int, tuple[int, int]] = field(default_factory=dict)
    reported: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.client.url


def hits_since(snapshots: list[tuple[WorkerState, dict]]) -> list[dict]:
    """[{"version", "ok", "failed"}]: each version's hits on all the workers since the counts
    each worker had in the last delivered heartbeat. A count lower than before means the worker
    restarted, and everything it counted since is new."""
    totals: dict[int, list[int]] = {}
    for worker, counts in snapshots:
        for version, (ok, failed) in counts.items():
            before_ok, before_failed = worker.reported.get(version, (0, 0))
            if ok < before_ok or failed < before_failed:
                before_ok = before_failed = 0
            total = totals.setdefault(version, [0, 0])
            total[0] += ok - before_ok
            total[1] += failed - before_failed
    return [
        {"version": version, "ok": ok, "failed": failed}
        for version, (ok, failed) in sorted(totals.items())
        if ok or failed
    ]


class WorkerSync:
    """The steps of the agent's loop that talk to its workers (a part of AgentDaemon)."""

    workers: list[WorkerState]
    config: dict | None
    applied: dict | None
    clock: Callable[[], float]
    state: StateDir
    controller: ControllerClient
    heartbeat_due: float
    first_hits_pending: bool
    preflights_run: collections.deque[str]

    def sync_workers(self) -> None:
        """Check every worker that is due and push to those that are empty or behind."""
        for worker in self.workers:
            if worker.due <= self.clock():
                self.sync_worker(worker)

    def sync_worker(self, worker: WorkerState) -> None:
        try:
            if self._known_behind(worker):
                # A new version reaches the worker in one request rather than two: the push
                # answers whether it was taken, and a refused one is looked into below.
                self._push(worker)
                worker.due = 0.0
                return
            worker.version, worker.hits = worker.client.health()
            worker.ok = True
            if self.config is not None:
                wanted = self.config["version"]
                if worker.version is None or worker.version < wanted:
                    self._push(worker)
                elif worker.version == wanted:
                    # Another agent of the same worker may have pushed it first.
                    self._mark_applied(self.config)
                elif worker.version > wanted and not worker.ahead_logged:
                    logger.warning(
                        "worker %s runs v%s, newer than the agent's v%s; left as it is",
                        worker.url,
                        worker.version,
                        wanted,
                    )
                    worker.ahead_logged = True
        except (WorkerUnavailable, PushRefused) as exc:
            worker.ok = False
            delay = worker.backoff.next_delay()
            worker.due = self.clock() + delay
            log = logger.error if isinstance(exc, PushRefused) else logger.warning
            log("worker %s: %s; next try in %.1f s", worker.url, exc, delay)
            return
        if worker.backoff.failures:
            logger.info("worker %s reachable again", worker.url)
            worker.backoff.reset()
        worker.due = 0.0

    def _known_behind(self, worker: WorkerState) -> bool:
        """Whether the worker answered its last request holding a version older than the
        agent's: then it needs the push, and no health check first."""
        return (
            self.config is not None
            and worker.ok
            and worker.version is not None
            and worker.version < self.config["version"]
        )

    def start_preflight(self, request: dict) -> threading.Thread | None:
        """Have one worker fetch the URL without applying it, and post the answer back, on a
        thread of its own: the watch goes on meanwhile."""
        if request["id"] in self.preflights_run:
            return None
        self.preflights_run.append(request["id"])
        thread = threading.Thread(
            target=self.run_preflight, args=(request,), name="agent-preflight", daemon=True
        )
        thread.start()
        return thread

    def run_preflight(self, request: dict) -> None:
        # A worker that answered its last check, else the first.
        worker = next((w for w in self.workers if w.ok), self.workers[0])
        timeout = max(1, request["timeout_seconds"])
        started = time.monotonic()
        try:
            result = worker.client.preflight(request["config_url"], timeout)
        except WorkerUnavailable as exc:
            result = {
                "status": None,
                "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
                "error": f"worker {worker.url}: {exc}",
            }
        logger.info(
            "pre-flight %s on worker %s: %s",
            request["id"],
            worker.url,
            result["error"] or f"HTTP {result['status']}",
        )
        try:
            self.controller.preflight_result(request["id"], worker.url, result)
        except (ControllerUnavailable, TokenRefused) as exc:
            logger.warning("pre-flight %s: answer not delivered: %s", request["id"], exc)

    def _push(self, worker: WorkerState) -> None:
        config = self.config
        assert config is not None, "a worker is pushed to only once there is a config"
        if worker.version is None:
            logger.info("worker %s has no config", worker.url)
        else:
            logger.info(
                "worker %s behind (v%s < v%s)", worker.url, worker.version, config["version"]
            )
        if worker.client.push(config):
            worker.version = config["version"]
            logger.info("pushed v%s to worker %s", config["version"], worker.url)
        else:
            logger.warning(
                "worker %s refused v%s as older than what it holds", worker.url, config["version"]
            )
            # Another agent of the same worker pushed a newer one: learn which, so that the
            # next cycle does not push again.
            worker.version, worker.hits = worker.client.health()
        worker.ahead_logged = False
        self._mark_applied(config)

    def _mark_applied(self, config: dict) -> None:
        if self.applied is not None and all(
            self.applied[name] == config[name] for name in CONFIG_FIELDS
        ):
            return
        try:
            self.state.save_config(config)
        except OSError as exc:
            logger.error("could not write %s: %s", self.state.config_path, exc)
        self.applied = config
        # Report the new version at once, and its first hits a few seconds later.
        self.heartbeat_due = self.clock()
        self.first_hits_pending = True
