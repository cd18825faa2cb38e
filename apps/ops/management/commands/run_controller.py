from django.conf import settings
from django.core.management.base import BaseCommand

from apps.ops.serving import GunicornApplication, exit_with, parse_bind, raise_open_file_limit


class Command(BaseCommand):
    help = "Run the controller: gunicorn with uvicorn workers serving the ASGI application."

    def add_arguments(self, parser):
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
        try:
            parse_bind(bind)
        except ValueError as exc:
            exit_with(str(exc))
        if workers < 1:
            exit_with("--workers must be at least 1")
        open_files = raise_open_file_limit()
        self.stderr.write(
            f"controller listening on http://{bind} with {workers} worker(s), "
            f"{open_files} open files allowed"
        )
        GunicornApplication(
            lambda: __import__("controller_site.asgi", fromlist=["application"]).application,
            {
                "bind": bind,
                "workers": workers,
                "worker_class": "apps.ops.asgi_worker.ControllerWorker",
                # Async workers report to the arbiter from their event loop, so held watches
                # (at most 60 s) do not count against this.
                "timeout": settings.CONTROLLER_TIMEOUT,
                "graceful_timeout": settings.CONTROLLER_GRACEFUL_TIMEOUT,
                "keepalive": settings.CONTROLLER_KEEPALIVE,
                "accesslog": "-" if settings.CONTROLLER_ACCESS_LOG else None,
                "errorlog": "-",
                "loglevel": settings.LOG_LEVEL.lower(),
                "control_socket_disable": True,
                "forwarded_allow_ips": settings.FORWARDED_ALLOW_IPS,
                "proc_name": "dcs-controller",
            },
        ).run()
