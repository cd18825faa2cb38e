import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from prometheus_client import CollectorRegistry

from agent.daemon import Agent
from agent.metrics import MeasuredAgent, serve_metrics
from apps.ops.serving import parse_bind
from protocol.labels import InvalidLabels, parse_label_pairs


class Command(BaseCommand):
    help = (
        "Run the agent: register once, watch the controller's version and push each new config "
        "to the workers, signed with INTERNAL_KEY."
    )
    # The agent talks HTTP only; it needs neither the database nor its checks.
    requires_system_checks: list = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("--controller-url", help="Controller base URL (CONTROLLER_URL).")
        parser.add_argument(
            "--worker-url",
            action="append",
            dest="worker_urls",
            help="Worker base URL; repeat for several (WORKER_URL, a comma list).",
        )
        parser.add_argument(
            "--registration-token", help="One-time registration token (REGISTRATION_TOKEN)."
        )
        parser.add_argument(
            "--state-dir", help="Where credentials and the config cache live (AGENT_STATE_DIR)."
        )
        parser.add_argument(
            "--no-watch",
            action="store_true",
            help="Poll the version each period instead of holding a watch request.",
        )
        parser.add_argument(
            "--heartbeat-seconds",
            type=float,
            default=settings.AGENT_HEARTBEAT_SECONDS,
            help="Seconds between reports to the controller (AGENT_HEARTBEAT_SECONDS).",
        )
        parser.add_argument(
            "--label",
            action="append",
            dest="labels",
            metavar="KEY=VALUE",
            help="A label of this agent, for rollouts to pick canaries by; repeat for several "
            "(AGENT_LABELS, a comma list). Given here, they replace AGENT_LABELS.",
        )
        parser.add_argument("--once", action="store_true", help="Run one cycle and exit.")
        parser.add_argument(
            "--metrics-bind",
            default=settings.AGENT_METRICS_BIND,
            help="HOST:PORT to serve Prometheus metrics on; off unless given (AGENT_METRICS_BIND).",
        )

    def handle(self, *args, **options):
        if not settings.INTERNAL_KEY:
            self.stderr.write("INTERNAL_KEY is required: set it to the secret the workers share.")
            raise SystemExit(2)
        controller_url = options["controller_url"] or settings.CONTROLLER_URL
        worker_urls = options["worker_urls"] or settings.WORKER_URLS
        if not controller_url:
            raise CommandError("Give --controller-url or set CONTROLLER_URL.", returncode=2)
        if not worker_urls:
            raise CommandError("Give --worker-url or set WORKER_URL.", returncode=2)
        if (
            min(
                settings.AGENT_DEFAULT_INTERVAL,
                settings.AGENT_BACKOFF_CAP,
                settings.AGENT_WORKER_CHECK_SECONDS,
                options["heartbeat_seconds"],
            )
            <= 0
        ):
            raise CommandError(
                "AGENT_DEFAULT_INTERVAL, AGENT_BACKOFF_CAP, AGENT_WORKER_CHECK_SECONDS and "
                "AGENT_HEARTBEAT_SECONDS (--heartbeat-seconds) must be positive.",
                returncode=2,
            )
        labels = settings.AGENT_LABELS
        if options["labels"]:
            try:
                labels = parse_label_pairs(options["labels"])
            except InvalidLabels as exc:
                raise CommandError(f"--label: {exc}", returncode=2) from None
        metrics_address = None
        if options["metrics_bind"]:
            try:
                metrics_address = parse_bind(options["metrics_bind"])
            except ValueError as exc:
                raise CommandError(
                    str(exc).replace("--bind", "--metrics-bind"), returncode=2
                ) from None
        agent_class, extra = Agent, {}
        if metrics_address:
            registry = CollectorRegistry()
            agent_class, extra = MeasuredAgent, {"registry": registry}
        agent = agent_class(
            controller_url=controller_url,
            worker_urls=worker_urls,
            internal_key=settings.INTERNAL_KEY,
            state_dir=options["state_dir"] or settings.AGENT_STATE_DIR,
            registration_token=options["registration_token"] or settings.REGISTRATION_TOKEN,
            watch=not options["no_watch"],
            default_interval=settings.AGENT_DEFAULT_INTERVAL,
            backoff_cap=settings.AGENT_BACKOFF_CAP,
            worker_check_seconds=settings.AGENT_WORKER_CHECK_SECONDS,
            heartbeat_seconds=options["heartbeat_seconds"],
            connect_timeout=settings.AGENT_CONNECT_TIMEOUT,
            read_timeout=settings.AGENT_READ_TIMEOUT,
            labels=labels,
            **extra,
        )
        if metrics_address:
            try:
                serve_metrics(*metrics_address, registry=registry)
            except OSError as exc:
                raise CommandError(
                    f"cannot serve metrics on {options['metrics_bind']}: {exc.strerror}",
                    returncode=2,
                ) from None
        if options["once"]:
            agent.run_once()
            agent.close()
            return

        stop = threading.Event()

        def on_signal(signum, frame):
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        agent.run(stop)
