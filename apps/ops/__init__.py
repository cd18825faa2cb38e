"""Running the controller and the processes around it, and watching them run.

- processes: the management commands that start the controller, the worker, the agent and the
  whole local stack (management/commands/, stack.py), gunicorn under a command (serving.py),
  its worker class (gunicorn_worker.py) and a listening socket per worker (listeners.py);
- probes: /healthz and /readyz (views.py);
- metrics: the instruments (metrics.py) and the /metrics scrape with its database collector
  (views.py);
- the database's statement timeout kept for pooled connections (database.py).

The admin console and the schema hooks live in controller_site/, the log formats in protocol/.
"""
