"""The controller's periodic jobs: work on the shared state that someone must do every so often.

A job is one small step, run again every so many seconds. Each step claims its work with a row
lock taken by `select_for_update(skip_locked=True)`, so any number of processes may run the
same jobs at once: the one that gets the row acts, the others skip that step rather than wait,
and none of our processes has to lead. They run on a thread of every controller process,
started with the ASGI lifespan (CONTROLLER_RUN_JOBS, on by default), and alone as
`manage.py run_jobs`, for deployments that want them apart (then CONTROLLER_RUN_JOBS=0 on the
controllers; running both is safe, only wasted).

What each serving process must do for itself is not here: its memory of agent tokens is swept
of revoked agents, and its held watches are cut, by its watch hub (apps/configs/hub.py), since
no other process can do that in its place.

A change that leaves work for a job (an event in the webhook outbox) calls `run_soon`
(apps/ops/wake.py) after its
commit: the job then runs at once on this process's runner instead of at its next period, and
the period stays the safety net for work left by a process that died.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

from apps.changes.scheduling import publish_due_changes
from apps.ops.wake import RUNNERS
from apps.rollouts.services import advance_rollouts
from apps.webhooks.delivery import DELIVERY_JOB, deliver_due, stop_deliveries

logger = logging.getLogger(__name__)

# The longest a runner waits between two looks at its jobs: a stop is honoured within this.
MAX_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class Job:
    """One periodic step: `step` is called every `every()` seconds (read from the settings
    each time, so a test may change them)."""

    name: str
    every: Callable[[], float]
    step: Callable[[], object]
    # Called when the runner stops, for a job whose steps leave work running on other threads
    # (the webhook deliveries): it lets that work end after what is in progress.
    stop: Callable[[], object] | None = None


JOBS: tuple[Job, ...] = (
    # Start a rolling rollout's next wave when the current one is applied and has baked,
    # complete it after the last, pause it when a wave times out (apps/rollouts/services.py).
    Job("advance rollouts", lambda: settings.ROLLOUT_TICK_SECONDS, advance_rollouts),
    # Send the webhook outbox's due deliveries and retries (apps/webhooks/delivery.py).
    Job(DELIVERY_JOB, lambda: settings.WEBHOOKS_TICK_SECONDS, deliver_due, stop_deliveries),
    # Publish each scheduled change when its time comes, or find it stale or expired
    # (apps/changes/scheduling.py).
    Job(
        "publish scheduled changes",
        lambda: settings.SCHEDULED_TICK_SECONDS,
        publish_due_changes,
    ),
)


class JobRunner:
    """Runs `jobs`, each when it is due, until `stop` is set: in the run_jobs command's main
    thread (run) or on a thread of a controller process (start, then halt)."""

    def __init__(self, jobs: tuple[Job, ...] = JOBS, stop: threading.Event | None = None) -> None:
        self.jobs = jobs
        self.stop = stop or threading.Event()
        self.due = dict.fromkeys((job.name for job in jobs), 0.0)
        self.failing: set[str] = set()
        self._thread: threading.Thread | None = None
        # Rung by `wake` (and by a stop): the wait between two looks at the jobs ends at once.
        self._bell = threading.Event()

    def wake(self, name: str) -> None:
        """Make the job `name` due now and end the runner's wait."""
        if name in self.due:
            self.due[name] = 0.0
            self._bell.set()

    def run_due(self) -> float:
        """Run every job that is due, once; the seconds until the next one is."""
        for job in self.jobs:
            if self.stop.is_set():
                break
            if time.monotonic() >= self.due[job.name]:
                # Set before the step, so that a wake during the step is kept.
                self.due[job.name] = time.monotonic() + job.every()
                self._run(job)
        return max(0.0, min(self.due.values()) - time.monotonic())

    def _run(self, job: Job) -> None:
        try:
            job.step()
        except DatabaseError as exc:
            # The database is down or the statement timed out: the next step tries again.
            if job.name not in self.failing:
                logger.warning("job %r could not run: %s", job.name, exc)
            self.failing.add(job.name)
            return
        except Exception:  # noqa: BLE001 - a bug in one job must not stop the others
            logger.exception("job %r failed", job.name)
            return
        if job.name in self.failing:
            logger.info("job %r runs again", job.name)
            self.failing.discard(job.name)

    def run(self) -> None:
        """Run the jobs until `stop` is set; the step in progress finishes first."""
        RUNNERS.add(self)
        try:
            while not self.stop.is_set():
                # A connection broken or past its age is replaced before the next step.
                close_old_connections()
                # Cleared before the step: a wake during it ends the wait that follows.
                self._bell.clear()
                wait = self.run_due()
                self._bell.wait(min(wait, MAX_WAIT_SECONDS))
        finally:
            RUNNERS.discard(self)
            for job in self.jobs:
                if job.stop is not None:
                    job.stop()
            connection.close()

    def start(self) -> None:
        """Run the jobs on a thread of this process (the ASGI lifespan's start-up)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="periodic-jobs", daemon=True)
            self._thread.start()

    def halt(self, timeout: float = 5.0) -> None:
        """Stop the thread, letting the step in progress finish (within `timeout`)."""
        self.stop.set()
        self._bell.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
