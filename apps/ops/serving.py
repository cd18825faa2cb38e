"""Running an application under gunicorn from a management command."""

import os
import resource
import tempfile

from gunicorn.app.base import BaseApplication
from prometheus_client import multiprocess, values


class GunicornApplication(BaseApplication):
    """gunicorn driven from Python: `options` are gunicorn settings, `load` returns the app."""

    def __init__(self, load, options: dict) -> None:
        self._load = load
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self):
        return self._load()


def raise_open_file_limit() -> int:
    """Lift the soft limit on open files to the hard one: every held watch is a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def enable_multiprocess_metrics() -> str:
    """Point prometheus_client at a fresh directory, before any worker process starts.

    Every process that forks from here writes its counters there, and GET /metrics in any of
    them adds them up. A fresh directory per start keeps a previous run's counts out.
    """
    path = tempfile.mkdtemp(prefix="dcs-controller-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    # prometheus_client picks its value store when first imported; pick again now.
    values.ValueClass = values.get_value_class()
    return path


def mark_metrics_process_dead(server, worker) -> None:
    """gunicorn child_exit hook: a dead worker's live gauges (held watches) stop counting."""
    multiprocess.mark_process_dead(worker.pid)
