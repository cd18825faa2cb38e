"""Reading one sample out of a Prometheus text exposition."""

import re

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
