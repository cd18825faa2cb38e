"""Reading one sample out of a Prometheus text exposition, and which metrics the processes
export."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The labels of the default scope's per-scope gauges.
DEFAULT_SCOPE = {"application": "default", "environment": "production"}


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of `name` carrying all of `labels` (others may be there
    too); None when there is none."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        base, _, rest = metric.partition("{")
        if base != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(found.get(key) == wanted for key, wanted in labels.items()):
            return float(value)
    return None


def unexported(expression: str) -> list[str]:
    """The controller's, worker's and agent's metrics that a PromQL `expression` names but no
    process defines (by its name, as prometheus_client is given it)."""
    sources = "".join(
        path.read_text()
        for folder in ("apps", "agent", "worker")
        for path in (ROOT / folder).rglob("*.py")
    )
    named = re.findall(r"\b((?:controller|worker|agent)_[a-z_]+)", expression)
    return [
        metric
        for metric in named
        if f'"{re.sub(r"_(total|bucket|sum|count)$", "", metric)}"' not in sources
    ]
