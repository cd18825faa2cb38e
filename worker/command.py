"""`manage.py run_worker`: manage.py hands this command to the worker package before Django
loads, so a worker process holds neither the controller's apps nor its settings."""

import argparse
import logging
import logging.config
import sys

from protocol.cli import PortInUse, UsageError, check_port_free, parse_bind
from protocol.config_file import ConfigFileError, add_config_argument
from protocol.logs import logging_config, server_logging_config
from protocol.secrets import weakness
from protocol.settings import SettingsError, read_role_settings
from worker.app import WorkerApp
from worker.server import serve
from worker.settings import WorkerSettings, read_settings

HELP = (
    "Run the worker: hold the configuration the agent pushes and answer GET /hit by fetching "
    "its config_url (granian, one worker process, WORKER_THREADS threads)."
)
logger = logging.getLogger(__name__)

MISSING_KEY = (
    "INTERNAL_KEY is not set. The worker accepts configuration only from an agent holding the "
    "same key: set INTERNAL_KEY to a long random string shared with the agent (for example: "
    "python -c 'import secrets; print(secrets.token_urlsafe(32))')."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--bind", default=None, help="HOST:PORT to listen on (WORKER_BIND).")
    parser.add_argument(
        "--threads", type=int, default=None, help="Server threads (WORKER_THREADS)."
    )


def read_worker_settings(config_path: str | None) -> WorkerSettings:
    return read_role_settings("worker", read_settings, config_path)[0]


def resolve(options: dict, settings: WorkerSettings) -> tuple[str, int]:
    """The bind and the thread count in effect: the flag, else the setting."""
    if not settings.internal_key:
        raise UsageError(MISSING_KEY)
    bind = options.get("bind") or settings.bind
    parse_bind(bind)
    threads = settings.threads if options.get("threads") is None else options["threads"]
    if threads < 1:
        raise UsageError("--threads must be at least 1.")
    return bind, threads


def run(options: dict, config_path: str | None = None) -> int:
    """Serve until SIGTERM or SIGINT; the exit status."""
    try:
        settings = read_worker_settings(config_path)
        bind, threads = resolve(options, settings)
        problem = weakness("INTERNAL_KEY", settings.internal_key)
        if problem:
            raise UsageError(f"{problem} (it proves a push comes from the agent).")
        app = WorkerApp(
            internal_key=settings.internal_key or "",  # resolve() refused a missing key
            require_signature=settings.require_signature,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_body_bytes=settings.max_body_bytes,
            block_private_upstreams=settings.block_private_upstreams,
        )
    except (UsageError, ConfigFileError, SettingsError) as exc:
        return _fail(str(exc), 2)
    except ValueError as exc:
        return _fail(f"Invalid worker settings: {exc}.", 2)
    host, _, port = bind.rpartition(":")
    try:
        # granian binds with SO_REUSEPORT, so a port another worker holds would be shared
        # silently, two configurations behind one address: refuse any port already taken.
        check_port_free(host.strip("[]"), int(port), "worker", "--bind or WORKER_BIND")
    except PortInUse as exc:
        return _fail(str(exc), 1)
    logging_settings = logging_config(settings.log_level, settings.log_format)
    logging.config.dictConfig(logging_settings)
    if not settings.require_signature:
        logger.warning(
            "WORKER_REQUIRE_SIGNATURE is off: pushes with the plain X-Internal-Key header are "
            "accepted, which anyone who sees one can send again with any config. The agent "
            "always signs; turn it on unless a client of the seed's still pushes here."
        )
    try:
        serve(
            app,
            bind=bind,
            threads=threads,
            loglevel=settings.log_level.lower(),
            logconfig=server_logging_config(logging_settings),
            access_log=settings.access_log,
        )
    except RuntimeError as exc:
        # granian reports a socket it cannot bind (address in use, no such address) as a
        # RuntimeError whose first line says why; the rest is a Rust backtrace.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _fail(f"Cannot listen on {bind}: {reason}.", 1)
    return 0


def _fail(message: str, status: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    return status


def main(argv: list[str], config_path: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog="manage.py run_worker", description=HELP)
    add_arguments(parser)
    return run(vars(parser.parse_args(argv)), config_path)
