"""Serving the worker's WSGI app with granian: one worker process, many threads.

granian parses HTTP in Rust, outside the GIL, and hands each request to a pool of Python threads;
per request it costs a fraction of what gunicorn's threaded worker did, which is what lets a
single process keep up with many concurrent hits. The configuration lives in the memory of that
one process, so there is exactly one worker process and it is never recycled.
"""

import ctypes
import logging
import multiprocessing
import os
import signal
import sys

from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server import Server

# How long SIGTERM waits for requests in flight before the worker process is killed.
GRACEFUL_TIMEOUT_SECONDS = 5
# How long a client may take to send a request's headers.
HEADER_TIMEOUT_MS = 30_000
# The read buffer, which bounds a request's line and headers: about 16 KiB of them pass, more are
# refused with 431 (bodies stream through it). The agent's requests carry a few hundred bytes.
MAX_HEADER_BYTES = 16 * 1024
# The access line: the formatter in front adds the time and level.
ACCESS_FORMAT = '%(addr)s "%(method)s %(path)s %(protocol)s" %(status)d %(dt_ms).1fms'


class SkipThreadWarning(logging.Filter):
    """Drops granian's start-up warning about more Python threads than cores: the worker's
    threads spend their time waiting on the upstream, not on the CPU."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Configuration allows spawning up to")


def _exit_with(parent: int) -> None:
    """In the worker process: stop when the main process dies, even by SIGKILL.

    Otherwise the worker process would be left serving on its own, holding the port, and a
    restarted `run_worker` could not listen there."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the main process died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _logging(logconfig: dict, loglevel: str) -> dict:
    """The project's logging for granian's own loggers: one line per event, text or JSON."""
    access = "access" if "access" in logconfig["handlers"] else "console"
    return {
        **logconfig,
        "filters": {
            **logconfig.get("filters", {}),
            "skip_thread_warning": {"()": SkipThreadWarning},
        },
        "loggers": {
            **logconfig["loggers"],
            "_granian": {
                "handlers": ["console"],
                "level": loglevel.upper(),
                "propagate": False,
                "filters": ["skip_thread_warning"],
            },
            "granian.access": {"handlers": [access], "level": "INFO", "propagate": False},
        },
    }


def serve(
    app,
    *,
    bind: str,
    threads: int,
    loglevel: str = "info",
    logconfig: dict | None = None,
    access_log: bool = False,
) -> None:
    """Serve `app` on `bind` (HOST:PORT) until SIGTERM or SIGINT."""
    host, _, port = bind.rpartition(":")
    # The app is built here and reaches the worker process by fork: nothing needs to be
    # imported or configured again on the other side.
    multiprocessing.set_start_method("fork", force=True)
    server = Server(
        "worker.app:WorkerApp",  # only named in granian's own messages; the app is passed below
        address=host.strip("[]"),
        port=int(port),
        interface=Interfaces.WSGI,
        workers=1,
        blocking_threads=threads,
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(
            header_read_timeout=HEADER_TIMEOUT_MS, max_buffer_size=MAX_HEADER_BYTES
        ),
        websockets=False,
        log_level=LogLevels(loglevel),
        log_dictconfig=_logging(logconfig, loglevel) if logconfig is not None else None,
        # A line per hit costs a busy worker CPU; off unless asked for.
        log_access=access_log,
        log_access_format=ACCESS_FORMAT,
        workers_kill_timeout=GRACEFUL_TIMEOUT_SECONDS,
        # A worker process that dies is replaced at once; the agent refills its configuration
        # at its next check.
        respawn_failed_workers=True,
    )
    main_process = os.getpid()

    def load(target: str):
        # Runs in the worker process, right after the fork.
        _exit_with(main_process)
        return app

    server.serve(target_loader=load)
