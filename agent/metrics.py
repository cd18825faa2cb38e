"""Opt-in Prometheus metrics of the agent (`run_agent --metrics-bind HOST:PORT`).

The seed's agent has no public endpoints, so this is off unless asked for. The counters are
kept by a subclass of the agent; the versions and worker states are read when scraped.
"""

import threading

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily

from agent.daemon import AgentDaemon, WorkerState


class _AgentStateCollector:
    def __init__(self, agent: "MeasuredAgentDaemon") -> None:
        self.agent = agent

    def collect(self):
        agent = self.agent
        yield GaugeMetricFamily(
            "agent_applied_version",
            "Version of the last config a worker accepted from this agent; 0 for none.",
            value=agent.applied["version"] if agent.applied else 0,
        )
        yield GaugeMetricFamily(
            "agent_config_version",
            "Newest config version the agent holds from the controller; 0 for none.",
            value=agent.config["version"] if agent.config else 0,
        )
        yield GaugeMetricFamily(
            "agent_registered",
            "1 when the agent holds credentials the controller has not refused.",
            value=1 if agent.credentials else 0,
        )
        workers = GaugeMetricFamily(
            "agent_worker_up", "1 when the worker answered its last check.", labels=["worker"]
        )
        for worker in agent.workers:
            workers.add_metric([worker.url], 1 if worker.ok else 0)
        yield workers


class MeasuredAgentDaemon(AgentDaemon):
    """The agent, counting its pushes and its failed contacts."""

    def __init__(self, *args, registry: CollectorRegistry, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.registry = registry
        self.pushes = Counter(
            "agent_pushes",
            "Pushes to workers by result: applied, refused (the worker holds a newer one), failed.",
            ["result"],
            registry=registry,
        )
        self.failures = Counter(
            "agent_failures",
            "Failed contacts by target: controller (unreachable, refused token, not registered) "
            "or worker.",
            ["target"],
            registry=registry,
        )
        for result in ("applied", "refused", "failed"):
            self.pushes.labels(result)
        for target in ("controller", "worker"):
            self.failures.labels(target)
        registry.register(_AgentStateCollector(self))

    def _push(self, worker: WorkerState) -> None:
        try:
            super()._push(worker)
        except Exception:
            self.pushes.labels("failed").inc()
            raise
        applied = self.config is not None and worker.version == self.config["version"]
        self.pushes.labels("applied" if applied else "refused").inc()

    def check_controller(self, stop: threading.Event) -> bool:
        answered = super().check_controller(stop)
        if not answered:
            self.failures.labels("controller").inc()
        return answered

    def sync_worker(self, worker: WorkerState) -> None:
        super().sync_worker(worker)
        if not worker.ok:
            self.failures.labels("worker").inc()


def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> None:
    """Serve GET /metrics from a background thread."""
    start_http_server(port, addr=host, registry=registry)
