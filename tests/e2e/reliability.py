"""The reliability record: what each end-to-end scenario broke, and what it measured.

Each scenario test calls `record()` with the figures it asserted on; they land as JSON under
tests/artifacts/reliability/. `python -m tests.e2e.reliability` renders docs/RELIABILITY.md from
them, and tests/e2e/test_record.py checks that the document's rows are exactly these scenarios,
so the record cannot drift from the suite.
"""

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "reliability"
DOC = ROOT / "docs" / "RELIABILITY.md"


@dataclass(frozen=True)
class Scenario:
    number: int
    title: str
    broken: str
    test: str


SCENARIOS = {
    "controller-stopped": Scenario(
        1,
        "Controller stopped",
        "the controller is stopped for several seconds while a change is made through a second "
        "controller",
        "test_faults.py::test_controller_stopped",
    ),
    "agent-restarted-controller-down": Scenario(
        2,
        "Agent restarted while the controller is down",
        "controller stopped, then the agent and the worker restarted (the worker empty)",
        "test_faults.py::test_agent_restarted_while_the_controller_is_down",
    ),
    "worker-restarted": Scenario(
        3,
        "Worker restarted",
        "the worker killed and started empty on its port",
        "test_faults.py::test_worker_restarted",
    ),
    "redis-stopped": Scenario(
        4,
        "Redis stopped and started",
        "Redis stopped while admins log in and change the config and agents watch, then started "
        "empty",
        "test_faults.py::test_redis_stopped_and_started",
    ),
    "postgres-stopped": Scenario(
        5,
        "PostgreSQL stopped",
        "the controller's PostgreSQL cluster stopped under it, then started again",
        "test_faults.py::test_postgres_stopped",
    ),
    "concurrent-changes": Scenario(
        6,
        "50 concurrent config changes",
        "50 changes at once from 5 admin sessions against 2 controller processes",
        "test_load.py::test_concurrent_changes",
    ),
    "load": Scenario(
        7,
        "200 agents under a change every second",
        "200 simulated agents (half holding watches, half polling) while the config changes "
        "every second",
        "test_load.py::test_load",
    ),
    "hostile-input": Scenario(
        8,
        "Hostile input",
        "schemathesis over the OpenAPI schema with admin and agent credentials; random pushes to "
        "the worker; oversized bodies and headers",
        "test_hostile.py",
    ),
    "auth-matrix": Scenario(
        9,
        "Authentication matrix",
        "every protected endpoint with 7 kinds of credential; replayed and tampered pushes; a "
        "login brute force",
        "test_auth.py",
    ),
    "properties": Scenario(
        10,
        "Property tests",
        "generated bodies, keys and tampered bytes for the push signature; generated URLs and "
        "intervals for the validators",
        "test_properties.py",
    ),
}

COLUMNS = ("recover_s", "served", "errors_5xx", "versions_lost")


def record(key: str, observed: str, **figures) -> None:
    """Keep what scenario `key` observed; the figures named in COLUMNS get their own column."""
    if key not in SCENARIOS:
        raise KeyError(f"unknown scenario {key!r}: add it to SCENARIOS")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{key}.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    if time.time() - result.get("recorded_at", 0) > 3600:
        result = {}  # a previous run's figures: start again
    result.setdefault("observed", [])
    if observed not in result["observed"]:
        result["observed"].append(observed)
    result.setdefault("figures", {}).update(figures)
    result["recorded_at"] = time.time()
    path.write_text(json.dumps(result, indent=2, sort_keys=True))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render(results: dict[str, dict]) -> str:
    lines = [
        "# Reliability",
        "",
        "What the system does when things break, under load and under hostile input. Every row is",
        "an end-to-end test in `tests/e2e/` that starts real processes (controller, PostgreSQL,",
        "Redis, workers, agents) on free ports, breaks something and asserts what a user would",
        "check. The figures are those of the run that generated this page",
        "(`python -m tests.e2e.reliability` after `pytest tests/e2e`); `tests/e2e/test_record.py`",
        "checks that the rows are exactly the scenarios the suite runs.",
        "",
        "| # | scenario | what was broken | what was observed | time to recover (s) | "
        "requests served | 5xx | versions lost | other figures |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, scenario in sorted(SCENARIOS.items(), key=lambda item: item[1].number):
        result = results.get(key, {})
        figures = dict(result.get("figures", {}))
        main = [_cell(figures.pop(name, None)) for name in COLUMNS]
        other = "; ".join(f"{name}: {_cell(value)}" for name, value in sorted(figures.items()))
        observed = " ".join(result.get("observed", ["not run"]))
        lines.append(
            f"| {scenario.number} | {scenario.title} (`{key}`) | {scenario.broken} | {observed} | "
            + " | ".join(main)
            + f" | {other or '-'} |"
        )
    lines += [
        "",
        "Scenario 7 runs for 30 s rather than 60 s to keep the suite inside CI's time; the rate of",
        "change (one per second) and the number of agents (200) are as specified.",
        "",
    ]
    return "\n".join(lines)


def load_results() -> dict[str, dict]:
    return {
        path.stem: json.loads(path.read_text())
        for path in sorted(ARTIFACTS.glob("*.json"))
        if path.stem in SCENARIOS
    }


def main() -> int:
    results = load_results()
    missing = sorted(set(SCENARIOS) - set(results))
    if missing:
        sys.stderr.write(f"no results for {', '.join(missing)}: run pytest tests/e2e first\n")
        return 1
    DOC.write_text(render(results))
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
