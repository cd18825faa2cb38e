import copy
import logging
import shutil

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.ops.listeners import stop_listening
from apps.ops.serving import (
    GunicornApplication,
    enable_multiprocess_metrics,
    mark_metrics_process_dead,
    raise_open_file_limit,
)
from controller_site.secrets_check import refuse_weak_secrets
from protocol.cli import UsageError, parse_bind
from protocol.config_file import add_config_argument

logger = logging.getLogger("apps.ops")


class Command(BaseCommand):
    help = "Run the controller: gunicorn with uvicorn workers serving the ASGI application."

    def add_arguments(self, parser):
        add_config_argument(parser)
        parser.add_argument(
            "--bind", default=settings.CONTROLLER_BIND, help="HOST:PORT (CONTROLLER_BIND)."
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=settings.CONTROLLER_WORKERS,
            help="Worker processes (CONTROLLER_WORKERS).",
        )

    def handle(self, *args, bind: str, workers: int, **options):
        refuse_weak_secrets("SECRET_KEY")
        try:
            parse_bind(bind)
        except UsageError as exc:
            raise CommandError(str(exc), returncode=2) from None
        if workers < 1:
            raise CommandError("--workers must be at least 1.", returncode=2)
        open_files = raise_open_file_limit()
        logger.info(
            "controller listening on http://%s with %s worker(s), %s open files allowed",
            bind,
            workers,
            open_files,
        )
        metrics_dir = enable_multiprocess_metrics()
        application = GunicornApplication(
            lambda: __import__("controller_site.asgi", fromlist=["application"]).application,
            gunicorn_options(bind, workers),
        )
        try:
            application.run()
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def gunicorn_options(bind: str, workers: int) -> dict:
    """gunicorn's settings for the controller, from ours."""
    logging_config = copy.deepcopy(settings.SERVER_LOGGING)
    if not settings.CONTROLLER_ACCESS_LOG:
        logging_config["loggers"]["gunicorn.access"] = {"handlers": [], "propagate": False}
    return {
        "bind": bind,
        "workers": workers,
        "worker_class": "apps.ops.gunicorn_worker.ControllerWorker",
        # Async workers report to the arbiter from their event loop, so held watches
        # (at most 60 s) do not count against this.
        "timeout": settings.CONTROLLER_TIMEOUT,
        "graceful_timeout": settings.CONTROLLER_GRACEFUL_TIMEOUT,
        "keepalive": settings.CONTROLLER_KEEPALIVE,
        "accesslog": "-" if settings.CONTROLLER_ACCESS_LOG else None,
        "errorlog": "-",
        "loglevel": settings.LOG_LEVEL.lower(),
        # One line per event on stdout, as text or JSON (LOG_FORMAT), like Django's.
        "logconfig_dict": logging_config,
        # gunicorn's control socket sits at one path per user; nothing here uses it.
        "control_socket_disable": True,
        "forwarded_allow_ips": settings.FORWARDED_ALLOW_IPS,
        "proc_name": "dcs-controller",
        "child_exit": mark_metrics_process_dead,
        # Each worker listens on a socket of its own (SO_REUSEPORT), so that the kernel shares
        # the connections out evenly; the arbiter's stays bound, holding the port.
        "when_ready": stop_listening,
    }
