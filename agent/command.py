"""`manage.py run_agent`: manage.py hands this command to the agent package before Django
loads, so an agent process holds neither the controller's apps nor its settings."""

import argparse
import logging.config
import signal
import sys
import threading
from typing import Any

from prometheus_client import CollectorRegistry

from agent.daemon import AgentDaemon
from agent.metrics import MeasuredAgentDaemon, serve_metrics
from agent.settings import AgentSettings, read_settings
from protocol.cli import UsageError, parse_bind
from protocol.config_file import ConfigFileError, add_config_argument
from protocol.labels import InvalidLabels, parse_label_pairs
from protocol.logs import logging_config
from protocol.secrets import weakness
from protocol.settings import SettingsError, read_role_settings

HELP = (
    "Run the agent: register once, watch the controller's version and push each new config "
    "to the workers, signed with INTERNAL_KEY."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
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
        default=None,
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
        help="HOST:PORT to serve Prometheus metrics on; off unless given (AGENT_METRICS_BIND).",
    )


def read_agent_settings(config_path: str | None) -> AgentSettings:
    return read_role_settings("agent", read_settings, config_path)[0]


def build_agent(options: dict, settings: AgentSettings) -> tuple[AgentDaemon, str | None]:
    """The agent the flags and settings describe, and its metrics HOST:PORT if any; raise
    UsageError."""
    if not settings.internal_key:
        raise UsageError("INTERNAL_KEY is required: set it to the secret the workers share.")
    controller_url = options.get("controller_url") or settings.controller_url
    worker_urls = options.get("worker_urls") or settings.worker_urls
    if not controller_url:
        raise UsageError("Give --controller-url or set CONTROLLER_URL.")
    if not worker_urls:
        raise UsageError("Give --worker-url or set WORKER_URL.")
    heartbeat_seconds = options.get("heartbeat_seconds")
    if heartbeat_seconds is None:
        heartbeat_seconds = settings.heartbeat_seconds
    periods = (
        settings.default_interval,
        settings.backoff_cap,
        settings.worker_check_seconds,
        heartbeat_seconds,
    )
    if min(periods) <= 0:
        raise UsageError(
            "AGENT_DEFAULT_INTERVAL, AGENT_BACKOFF_CAP, AGENT_WORKER_CHECK_SECONDS and "
            "AGENT_HEARTBEAT_SECONDS (--heartbeat-seconds) must be positive."
        )
    labels = settings.labels
    if options.get("labels"):
        try:
            labels = parse_label_pairs(options["labels"])
        except InvalidLabels as exc:
            raise UsageError(f"--label: {exc}") from None
    metrics_bind = options.get("metrics_bind") or settings.metrics_bind
    if metrics_bind:
        parse_bind(metrics_bind, "--metrics-bind")
    problem = weakness("INTERNAL_KEY", settings.internal_key)
    if problem:
        raise UsageError(f"{problem} (it signs every push to the workers).")
    agent_class: type[AgentDaemon] = AgentDaemon
    extra: dict[str, Any] = {}
    if metrics_bind:
        agent_class, extra = MeasuredAgentDaemon, {"registry": CollectorRegistry()}
    agent = agent_class(
        controller_url=controller_url,
        worker_urls=worker_urls,
        internal_key=settings.internal_key,
        state_dir=options.get("state_dir") or settings.state_dir,
        registration_token=options.get("registration_token") or settings.registration_token,
        watch=not options.get("no_watch"),
        default_interval=settings.default_interval,
        backoff_cap=settings.backoff_cap,
        worker_check_seconds=settings.worker_check_seconds,
        heartbeat_seconds=heartbeat_seconds,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        labels=labels,
        **extra,
    )
    return agent, metrics_bind


def run(options: dict, config_path: str | None = None) -> int:
    """Run the agent until SIGTERM or SIGINT (one cycle with --once); the exit status."""
    try:
        settings = read_agent_settings(config_path)
        agent, metrics_bind = build_agent(options, settings)
    except (UsageError, ConfigFileError, SettingsError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    if metrics_bind and isinstance(agent, MeasuredAgentDaemon):
        try:
            serve_metrics(*parse_bind(metrics_bind, "--metrics-bind"), registry=agent.registry)
        except OSError as exc:
            sys.stderr.write(f"error: cannot serve metrics on {metrics_bind}: {exc.strerror}\n")
            return 2
    if options.get("once"):
        agent.run_once()
        agent.close()
        return 0
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.run(stop)
    return 0


def main(argv: list[str], config_path: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog="manage.py run_agent", description=HELP)
    add_arguments(parser)
    return run(vars(parser.parse_args(argv)), config_path)
