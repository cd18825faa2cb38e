from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from controller_site.secrets_check import refuse_weak_secrets
from worker.app import WorkerApp
from worker.server import serve


def _check_bind(bind: str) -> str:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CommandError(f"--bind must be HOST:PORT, got {bind!r}.", returncode=2)
    return bind


class Command(BaseCommand):
    help = (
        "Run the worker: hold the configuration the agent pushes and answer GET /hit by fetching "
        "its config_url (granian, one worker process, WORKER_THREADS threads)."
    )
    # The worker uses none of the controller's models or database: skipping the system checks
    # keeps start-up quick and guarantees nothing here touches the database.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument(
            "--bind", default=None, help="HOST:PORT to listen on (default: WORKER_BIND)."
        )
        parser.add_argument(
            "--threads", type=int, default=None, help="Server threads (default: WORKER_THREADS)."
        )

    def handle(self, *args, bind: str | None, threads: int | None, **options):
        if not settings.INTERNAL_KEY:
            raise CommandError(
                "INTERNAL_KEY is not set. The worker accepts configuration only from an agent "
                "holding the same key: set INTERNAL_KEY to a long random string shared with the "
                "agent (for example: python -c "
                "'import secrets; print(secrets.token_urlsafe(32))').",
                returncode=2,
            )
        refuse_weak_secrets("INTERNAL_KEY")
        bind = _check_bind(bind or settings.WORKER_BIND)
        threads = settings.WORKER_THREADS if threads is None else threads
        if threads < 1:
            raise CommandError("--threads must be at least 1.", returncode=2)
        try:
            app = WorkerApp(
                internal_key=settings.INTERNAL_KEY,
                require_signature=settings.WORKER_REQUIRE_SIGNATURE,
                connect_timeout=settings.WORKER_CONNECT_TIMEOUT,
                read_timeout=settings.WORKER_READ_TIMEOUT,
                max_body_bytes=settings.WORKER_MAX_BODY_BYTES,
                block_private_upstreams=settings.WORKER_BLOCK_PRIVATE_UPSTREAMS,
            )
        except ValueError as exc:
            raise CommandError(f"Invalid worker settings: {exc}.", returncode=2) from None
        try:
            serve(
                app,
                bind=bind,
                threads=threads,
                loglevel=settings.LOG_LEVEL.lower(),
                logconfig=settings.GUNICORN_LOGGING,
                access_log=settings.WORKER_ACCESS_LOG,
            )
        except RuntimeError as exc:
            # granian reports a socket it cannot bind (address in use, no such address) as a
            # RuntimeError whose first line says why; the rest is a Rust backtrace.
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CommandError(f"Cannot listen on {bind}: {reason}.", returncode=1) from None
