"""Waking a periodic job of this process now, rather than at its next period.

Apart from apps/ops/jobs.py, which imports the jobs' steps, so that the code whose commits leave
a job work (the webhook outbox's writers, in apps/webhooks/events.py, beside the rollouts'
services, which the jobs import too) may wake it without importing every job.
"""

import weakref
from typing import Protocol


class Wakeable(Protocol):
    def wake(self, name: str) -> None: ...


# The job runners running in this process (apps.ops.jobs.JobRunner registers itself).
RUNNERS: "weakref.WeakSet[Wakeable]" = weakref.WeakSet()


def run_soon(name: str) -> None:
    """Run the job `name` now on this process's runners rather than at its next period; called
    after the commit of a change that left it work. A process without a running runner (jobs
    run apart, by `manage.py run_jobs`) leaves it to the period."""
    for runner in list(RUNNERS):
        runner.wake(name)
