"""`manage.py rollout_status [--wait] [--timeout SECONDS] [--application APP] [--environment ENV]`:
a deploy pipeline's gate on a scope's rollout (the default scope's unless named). Exit 0 when it
completed with every live agent on its version, 1 when it was halted or aborted, when it has not
converged (without --wait) or when --timeout ran out, 2 on bad usage (an unknown name too)."""

import time

from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections
from django.utils import timezone

from apps.rollouts import status
from apps.rollouts.health import health_of
from apps.rollouts.models import Rollout
from apps.scopes.services import named_scope
from controller_site.errors import ServiceError

POLL_SECONDS = 1.0
DEFAULT_TIMEOUT = 3600
# Enough stragglers to act on; the rest are counted.
STRAGGLERS_SHOWN = 20


class Command(BaseCommand):
    help = (
        "Print the current or last rollout: its waves, agents per state and the stragglers. "
        "Exit 0 when completed with every live agent on the version; 1 when halted, aborted, "
        "not there yet, or timed out; 2 on bad usage."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--application",
            default=None,
            help="The application of the rollout's scope (default: DEFAULT_APPLICATION).",
        )
        parser.add_argument(
            "--environment",
            default=None,
            help="The environment of the rollout's scope (default: DEFAULT_ENVIRONMENT).",
        )
        parser.add_argument(
            "--wait",
            action="store_true",
            help="Wait until the rollout completes and every live agent applied it, or ends "
            "otherwise.",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            help=f"With --wait: give up after this many seconds (exit 1). Default "
            f"{DEFAULT_TIMEOUT}.",
        )

    def handle(self, *args, **options):
        timeout = options["timeout"]
        if timeout is not None and not options["wait"]:
            raise CommandError("--timeout goes with --wait.", returncode=2)
        if timeout is not None and timeout <= 0:
            raise CommandError("--timeout must be a positive number of seconds.", returncode=2)
        try:
            scope = named_scope(options["application"], options["environment"])
        except ServiceError as exc:
            raise CommandError(str(exc.detail), returncode=2) from None
        deadline = time.monotonic() + (timeout or DEFAULT_TIMEOUT)
        printed = None
        while True:
            close_old_connections()
            rollout = status.get_latest_rollout(scope.pk)
            if rollout is None:
                self.stdout.write("No rollout has been started yet.")
                raise SystemExit(1)
            progress = status.measure(rollout)
            report = self.report(rollout, progress)
            if report != printed:
                self.stdout.write(report)
                printed = report
            converged = rollout.state == Rollout.COMPLETED and not progress.waiting
            if converged:
                self.stdout.write(
                    self.style.SUCCESS(f"converged: every live agent runs v{rollout.version}")
                )
                raise SystemExit(0)
            if rollout.state in (Rollout.HALTED, Rollout.ABORTED):
                why = f": {rollout.reason}" if rollout.reason else ""
                self.stdout.write(self.style.ERROR(f"the rollout was {rollout.state}{why}"))
                raise SystemExit(1)
            if not options["wait"]:
                raise SystemExit(1)
            if time.monotonic() >= deadline:
                self.stdout.write(self.style.ERROR("timed out before the rollout converged"))
                raise SystemExit(1)
            time.sleep(POLL_SECONDS)

    def report(self, rollout: Rollout, progress: status.Progress) -> str:
        now = timezone.now()
        canaries = ", ".join(f"{k}={v}" for k, v in sorted(rollout.canary_labels.items()))
        waves = " ".join(f"{percent}%" for percent in rollout.waves)
        stale = [agent for agent in progress.agents if agent["stale"]]
        new, previous = health_of(rollout)
        then = "halt and roll back" if rollout.auto_rollback else "pause"
        lines = [
            f"rollout of v{rollout.version} (from v{rollout.previous_version}): {rollout.state}, "
            f"wave {rollout.wave} of {rollout.last_wave}",
            f"  plan: canaries {canaries or '(none)'}; waves {waves}; bake "
            f"{rollout.bake_seconds} s"
            + (
                f"; wave timeout {rollout.wave_timeout_seconds} s"
                if rollout.wave_timeout_seconds
                else ""
            ),
            f"  started {rollout.started_at:%Y-%m-%d %H:%M:%S} UTC, updated "
            f"{rollout.updated_at:%Y-%m-%d %H:%M:%S} UTC"
            + (f"; reason: {rollout.reason}" if rollout.reason else ""),
            f"  agents: {progress.total} total, {progress.targeted} targeted, "
            f"{progress.applied} applied, {len(progress.waiting)} waiting, "
            f"{progress.total - progress.targeted} not yet targeted, {len(stale)} stale",
            f"  health: v{rollout.version} failure rate {new.describe()}, v"
            f"{rollout.previous_version} {previous.describe()}; when most agents judged "
            f"(at least two) fail above {rollout.max_failure_rate:.2f} over at least "
            f"{rollout.min_hits} hits each: {then}",
        ]
        stragglers = [a for a in progress.agents if not a["applied"]]
        if stragglers:
            lines.append("  stragglers (not on the version yet):")
            for agent in stragglers[:STRAGGLERS_SHOWN]:
                seen = agent["last_seen"]
                heard = (
                    f"last heartbeat {seen:%H:%M:%S} ({int((now - seen).total_seconds())} s ago)"
                    if seen
                    else "never heard from"
                )
                why = (
                    "stale"
                    if agent["stale"]
                    else ("applying" if agent["targeted"] else "wave not started")
                )
                lines.append(
                    f"    {agent['name'] or agent['hostname'] or '-'} {agent['id']} "
                    f"on v{agent['applied_version'] or 0}, {heard}, {why}"
                )
            if len(stragglers) > STRAGGLERS_SHOWN:
                lines.append(f"    … and {len(stragglers) - STRAGGLERS_SHOWN} more")
        return "\n".join(lines)
