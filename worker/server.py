"""Serving the worker's WSGI app with gunicorn: one process, many threads.

The configuration lives in the memory of that one process, so there is exactly one gunicorn worker
and it is never recycled; concurrency comes from the gthread worker's thread pool.
"""

from apps.ops.serving import GunicornApplication

# How long SIGTERM waits for requests in flight before the process is killed.
GRACEFUL_TIMEOUT_SECONDS = 5
# How long an idle client connection is kept open for its next request.
KEEPALIVE_SECONDS = 5


def serve(
    app,
    *,
    bind: str,
    threads: int,
    loglevel: str = "info",
    logconfig: dict | None = None,
    access_log: bool = False,
) -> None:
    """Serve `app` on `bind` until SIGTERM or SIGINT."""
    if logconfig is not None and not access_log:
        # A line per hit costs a busy worker more CPU than the hit itself; off by default.
        logconfig = {
            **logconfig,
            "loggers": {
                **logconfig["loggers"],
                "gunicorn.access": {"handlers": [], "propagate": False},
            },
        }
    options = {
        "bind": [bind],
        "workers": 1,
        "worker_class": "gthread",
        "threads": threads,
        # Recycling the worker process would drop the configuration it holds.
        "max_requests": 0,
        "graceful_timeout": GRACEFUL_TIMEOUT_SECONDS,
        "keepalive": KEEPALIVE_SECONDS,
        "proc_name": "dcs-worker",
        "errorlog": "-",
        "loglevel": loglevel,
        "accesslog": None,
        # gunicorn's control socket sits at one path per user: several instances on a host
        # would fight over it, and nothing here uses it.
        "control_socket_disable": True,
        # The project's logging (one line per event, text or JSON) instead of gunicorn's.
        "logconfig_dict": logconfig,
    }
    GunicornApplication(lambda: app, options).run()
