"""run_jobs: the controller's periodic jobs (apps/ops/jobs.py) in a process of their own.

Every controller process runs them too unless CONTROLLER_RUN_JOBS is off; each job claims its
work under a row lock, so this process may run beside them, or several of it, at no risk.
"""

import logging
import signal
import threading

from django.core.management.base import BaseCommand

from apps.ops.jobs import JobRunner
from protocol.config_file import add_config_argument

logger = logging.getLogger("apps.ops")


class Command(BaseCommand):
    help = (
        "Run the controller's periodic jobs (rollout waves, webhook deliveries, scheduled "
        "changes) until SIGTERM or SIGINT."
    )

    def add_arguments(self, parser):
        add_config_argument(parser)
        parser.add_argument(
            "--once", action="store_true", help="Run every job once, then exit (for tests)."
        )

    def handle(self, *args, once: bool, **options):
        stop = threading.Event()
        runner = JobRunner(stop=stop)
        if once:
            runner.run_due()
            return

        def on_signal(signum, frame):
            # The step in progress finishes; the loop ends at its next look at `stop`.
            logger.info("run_jobs: %s received, stopping", signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        logger.info("run_jobs: %s", ", ".join(job.name for job in runner.jobs))
        runner.run()
        logger.info("run_jobs: stopped")
