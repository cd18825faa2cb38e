"""The reliability record: what each end-to-end scenario broke, and the counters it measured.

Each scenario is made of one or more tests (its parts). Every part calls `record()` with the
counters it measured; `record()` refuses a part whose counters break the scenario's claims (a
failed request, an unexpected 5xx, a lost version), so a regression fails the run that measured
it. One pytest run writes one results file, tests/artifacts/reliability/latest.json, with the
commit and the time of the run; a file left by another run is replaced, never merged.

`python -m tests.e2e.reliability` takes a complete run (every part of every scenario, at a
commit with no local changes) into docs/reliability.json and renders docs/RELIABILITY.md from
it. tests/e2e/test_record.py checks that the page is exactly that rendering, that the results
are complete, hold every claim, come from a commit of this history and from the scenario
definitions below (a changed definition makes them stale until the suite is run again).
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "reliability"
RUN_FILE = ARTIFACTS / "latest.json"
RESULTS = ROOT / "docs" / "reliability.json"
DOC = ROOT / "docs" / "RELIABILITY.md"
# One id per pytest process: the parts of one run share it, another run starts a new file.
RUN_ID = f"{os.getpid()}-{time.time_ns()}"

# The figures with a column of their own, and what each counts.
COLUMNS = {
    "recover_s": "time to recover (s)",
    "served": "requests checked",
    "failed": "failed requests",
    "unexpected_5xx": "unexpected 5xx",
    "versions_lost": "versions lost",
}
# Claims every scenario makes about these counters when it records them.
ZERO = ("failed", "unexpected_5xx", "versions_lost")
# The figures a part computes from per-run counters it keeps (see counted_figures), and which.
COUNTED = {"served": "outcomes", "failed": "outcomes", "versions_lost": "versions_published"}
# Results files from FORMAT 2 on keep the per-run counters of COUNTED; docs/reliability.json
# files without "format" were written before, and their served, failed and versions_lost cannot
# be recomputed (the page says so).
FORMAT = 2


@dataclass(frozen=True)
class Scenario:
    number: int
    title: str
    broken: str
    # test id (file::function) -> the figures that test must record
    parts: dict[str, tuple[str, ...]]
    # figure -> the least value the claim needs (a count that must not be zero)
    at_least: dict[str, float] = field(default_factory=dict)


FAULT_FIGURES = ("recover_s", "served", "failed", "unexpected_5xx", "versions_lost")
PROPERTY_TESTS = (
    "test_a_signature_verifies_its_body_within_the_tolerance",
    "test_any_tampered_byte_is_refused",
    "test_a_wrong_key_or_a_stale_timestamp_is_refused",
    "test_any_garbage_header_is_refused_with_bad_signature_only",
    "test_generated_http_urls_are_accepted_up_to_the_length_limit",
    "test_the_url_validator_takes_any_value_and_refuses_non_urls_cleanly",
    "test_the_interval_validator_accepts_exactly_whole_seconds_in_range",
)

SCENARIOS = {
    "controller-stopped": Scenario(
        1,
        "Controller stopped",
        "the controller is stopped for several seconds while a change is made through a second "
        "controller",
        {
            "test_faults.py::test_controller_stopped": FAULT_FIGURES
            + ("agent_retries", "largest_retry_delay_s", "attempts_seen_by_stand_in")
        },
        {"served": 1, "agent_retries": 2},
    ),
    "agent-restarted-controller-down": Scenario(
        2,
        "Agent restarted while the controller is down",
        "controller stopped, then the agent and the worker restarted (the worker empty)",
        {"test_faults.py::test_agent_restarted_while_the_controller_is_down": FAULT_FIGURES},
        {"served": 1},
    ),
    "worker-restarted": Scenario(
        3,
        "Worker restarted",
        "the worker killed and started empty on its port",
        {"test_faults.py::test_worker_restarted": FAULT_FIGURES + ("cycle_s", "worker_check_s")},
        {"served": 1},
    ),
    "redis-stopped": Scenario(
        4,
        "Redis stopped and started",
        "Redis stopped while admins log in and change the config and agents watch, then started "
        "empty",
        {
            "test_faults.py::test_redis_stopped_and_started": FAULT_FIGURES
            + ("redis_outage_s", "versions_delivered")
        },
        {"served": 1, "versions_delivered": 4},
    ),
    "postgres-stopped": Scenario(
        5,
        "PostgreSQL stopped",
        "the controller's PostgreSQL cluster stopped under it, then started again",
        {
            "test_faults.py::test_postgres_stopped": FAULT_FIGURES
            + ("clean_503s_by_design", "endpoints_answering_clean_503")
        },
        {"served": 1, "endpoints_answering_clean_503": 9},
    ),
    "concurrent-changes": Scenario(
        6,
        "50 concurrent config changes",
        "50 changes at once from 5 admin sessions against 2 controller processes",
        {"test_load.py::test_concurrent_changes": FAULT_FIGURES + ("changes", "changes_per_s")},
        {"served": 50, "changes": 50},
    ),
    "load": Scenario(
        7,
        "200 agents under a change every second",
        "200 simulated agents (half holding watches, half polling) while the config changes "
        "every second",
        {
            "test_load.py::test_load": FAULT_FIGURES
            + (
                "agents",
                "changes",
                "seconds",
                "controller_rss_start_mib",
                "controller_rss_peak_mib",
            )
        },
        {"served": 1000, "agents": 200, "changes": 10},
    ),
    "hostile-input": Scenario(
        8,
        "Hostile input",
        "schemathesis over the OpenAPI schema with admin and agent credentials; random pushes to "
        "the worker; oversized bodies and headers",
        {
            "test_hostile.py::test_schemathesis_over_the_openapi_schema": (
                "served",
                "failed",
                "unexpected_5xx",
                "schemathesis_max_examples",
            ),
            "test_hostile.py::test_random_pushes_to_the_worker_change_nothing": (
                "worker_random_pushes",
                "worker_pushes_accepted",
            ),
            "test_hostile.py::test_oversized_bodies_and_headers_are_refused_cleanly": (
                "oversized_requests",
                "oversized_served",
            ),
        },
        {"served": 100, "worker_random_pushes": 100, "oversized_requests": 10},
    ),
    "auth-matrix": Scenario(
        9,
        "Authentication matrix",
        "every protected endpoint with 7 kinds of credential; replayed and tampered pushes; a "
        "login brute force",
        {
            "test_auth.py::test_only_the_right_credential_passes": (
                "served",
                "failed",
                "unexpected_5xx",
                "brute_force_429s",
            ),
            "test_auth.py::test_replayed_and_tampered_pushes_are_refused": (
                "refused_pushes",
                "bad_pushes_accepted",
            ),
        },
        {"served": 98, "brute_force_429s": 1, "refused_pushes": 2},
    ),
    "properties": Scenario(
        10,
        "Property tests",
        "generated bodies, keys and tampered bytes for the push signature; generated URLs and "
        "intervals for the validators",
        {f"test_properties.py::{name}": ("generated_examples",) for name in PROPERTY_TESTS},
        {"generated_examples": 50},
    ),
}

# Figures that must be zero wherever they are recorded, beside the columns of ZERO.
ZERO_FIGURES = ZERO + ("worker_pushes_accepted", "oversized_served", "bad_pushes_accepted")


def fingerprint() -> str:
    """Changes whenever a scenario's definition does: results of another definition are stale."""
    text = json.dumps(
        {
            key: [s.number, s.title, s.broken, s.parts, s.at_least]
            for key, s in sorted(SCENARIOS.items())
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


def current_commit() -> tuple[str, bool]:
    """HEAD and whether the tracked files differ from it."""
    return _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain", "--untracked-files=no"))


def _part_of_current_test() -> str:
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    path, _, rest = current.partition("::")
    return f"{Path(path).name}::{rest.split(' ')[0].split('[')[0]}"


def part_problems(key: str, part: str, figures: dict) -> list[str]:
    """What is wrong with one part's figures: missing, not a number, or breaking a claim."""
    scenario = SCENARIOS[key]
    problems = []
    for name in scenario.parts[part]:
        value = figures.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            problems.append(f"{key} ({part}): {name} is not a measured number: {value!r}")
    for name, value in figures.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if name in ZERO_FIGURES and value != 0:
            problems.append(f"{key} ({part}): {name} is {value}, the claim is 0")
        if name in scenario.at_least and value < scenario.at_least[name]:
            problems.append(
                f"{key} ({part}): {name} is {value}, the claim needs at least "
                f"{scenario.at_least[name]}"
            )
    return problems


def counted_figures(counters: dict) -> dict:
    """The figures a part's per-run counters give: `served` and `failed` from the tally of
    the requests it checked (`outcomes`: how many got each outcome, and which outcomes are
    failures), `versions_lost` from the versions it published and those it saw arrive."""
    figures = {}
    if "outcomes" in counters:
        outcomes, failing = counters["outcomes"], set(counters.get("failed_outcomes", []))
        figures["served"] = sum(outcomes.values())
        figures["failed"] = sum(n for outcome, n in outcomes.items() if outcome in failing)
    if "versions_published" in counters:
        published, seen = counters["versions_published"], counters.get("versions_seen", [])
        figures["versions_lost"] = len(set(published) - set(seen))
    return figures


def tally_outcomes(outcomes) -> dict[str, int]:
    """How many times each outcome (a status code, a word) occurred, as `record` keeps it."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[str(outcome)] = counts.get(str(outcome), 0) + 1
    return dict(sorted(counts.items()))


def record(
    key: str,
    observed: str,
    *,
    outcomes: dict[str, int] | None = None,
    failed_outcomes=(),
    versions: tuple | None = None,
    **figures,
) -> None:
    """Keep what the running test of scenario `key` measured; fail it if a claim is broken.

    `outcomes` (a tally of the requests checked, by outcome) with `failed_outcomes`, and
    `versions` (published, seen) are the per-run counters: `served`, `failed` and
    `versions_lost` are computed from them here, and kept beside them so that the results
    file can be checked against its own counters."""
    if key not in SCENARIOS:
        raise KeyError(f"unknown scenario {key!r}: add it to SCENARIOS")
    part = _part_of_current_test()
    if part not in SCENARIOS[key].parts:
        raise KeyError(f"{part} is not a part of scenario {key!r}: add it to its parts")
    counters: dict = {}
    if outcomes is not None:
        counters["outcomes"] = {str(k): v for k, v in sorted(outcomes.items())}
        counters["failed_outcomes"] = sorted(
            {str(o) for o in failed_outcomes} & set(counters["outcomes"])
        )
    if versions is not None:
        published, seen = versions
        counters["versions_published"] = sorted(str(v) for v in set(published))
        counters["versions_seen"] = sorted(str(v) for v in set(seen) if v is not None)
    derived = counted_figures(counters)
    typed = sorted(set(derived) & set(figures))
    if typed:
        raise TypeError(f"{', '.join(typed)} come from the counters; do not pass them as well")
    figures.update(derived)
    problems = part_problems(key, part, figures)
    assert not problems, problems
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    run = json.loads(RUN_FILE.read_text()) if RUN_FILE.exists() else {}
    if run.get("run_id") != RUN_ID:
        commit, dirty = current_commit()
        run = {
            "run_id": RUN_ID,
            "format": FORMAT,
            "commit": commit,
            "dirty": dirty,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "fingerprint": fingerprint(),
            "load_start": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
            "scenarios": {},
        }
    entry = {"observed": observed, "figures": figures}
    if counters:
        entry["counters"] = counters
    run["scenarios"].setdefault(key, {})[part] = entry
    run["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    run["load_end"] = round(os.getloadavg()[0], 2)
    RUN_FILE.write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")


def counter_problems(key: str, part: str, entry: dict, *, required: bool) -> list[str]:
    """Where a part's figures do not follow from its per-run counters; with `required` (a
    results file of FORMAT 2 or later), also a counted figure kept without its counters."""
    counters, figures = entry.get("counters") or {}, entry.get("figures", {})
    problems = []
    derived = counted_figures(counters)
    for name, value in derived.items():
        if figures.get(name) != value:
            problems.append(
                f"{key} ({part}): {name} is {figures.get(name)!r}, its counters give {value}"
            )
    if required:
        for name, counter in COUNTED.items():
            if name in figures and name not in derived:
                problems.append(f"{key} ({part}): {name} is kept without its counters ({counter})")
    return problems


def problems_of(results: dict) -> list[str]:
    """Everything that keeps `results` from standing behind the page; empty when sound."""
    problems = []
    if not re.fullmatch(r"[0-9a-f]{40}", str(results.get("commit", ""))):
        problems.append(f"no commit recorded: {results.get('commit')!r}")
    if results.get("dirty") is not False:
        problems.append("measured with local changes: commit them and run the suite again")
    for stamp in ("started_at", "finished_at"):
        try:
            datetime.fromisoformat(results.get(stamp, ""))
        except (TypeError, ValueError):
            problems.append(f"no {stamp} recorded")
    for load in ("load_start", "load_end", "cpus"):
        if not isinstance(results.get(load), int | float):
            problems.append(f"no {load} recorded (the machine's load average and cores)")
    if results.get("fingerprint") != fingerprint():
        problems.append("measured with other scenario definitions: stale, run the suite again")
    scenarios = results.get("scenarios", {})
    for key in sorted(set(scenarios) - set(SCENARIOS)):
        problems.append(f"results for an unknown scenario {key!r}")
    for key, scenario in SCENARIOS.items():
        parts = scenarios.get(key, {})
        for part in sorted(set(parts) - set(scenario.parts)):
            problems.append(f"{key}: results for {part}, which is not one of its tests")
        for part in scenario.parts:
            if part not in parts:
                problems.append(f"{key}: no results from {part}")
                continue
            if not parts[part].get("observed"):
                problems.append(f"{key}: {part} observed nothing")
            problems += part_problems(key, part, parts[part].get("figures", {}))
            problems += counter_problems(
                key, part, parts[part], required=results.get("format", 1) >= FORMAT
            )
    return problems


def page_problems(page: str, results: dict) -> list[str]:
    """Where `page` differs from the rendering of `results`: each line that differs (a figure
    typed into the page, a result changed under it); empty when the page is the rendering."""
    expected = render(results).splitlines()
    lines = page.splitlines()
    problems = [
        f"line {number}: {line!r}, the results render {want!r}"
        for number, (line, want) in enumerate(zip(lines, expected, strict=False), start=1)
        if line != want
    ]
    if len(lines) != len(expected):
        problems.append(f"{len(lines)} lines, the results render {len(expected)}")
    if not problems and page != render(results):
        problems.append("the page differs from the rendering in its line ends")
    return problems


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _sum(values: list):
    return sum(values) if values else None


def _counters_note(results: dict) -> list[str]:
    if results.get("format", 1) >= FORMAT:
        return [
            "Requests checked, failed requests and versions lost are computed from the per-run",
            "counters kept beside them in `docs/reliability.json` (the tally of the requests",
            "checked by outcome, the versions published and the versions seen), and",
            "`tests/e2e/test_record.py` computes them again from those counters.",
        ]
    return [
        "These results were recorded before each part kept its per-run counters: requests",
        "checked, failed requests and versions lost are the totals the tests recorded, and",
        "cannot be computed again from `docs/reliability.json`. The next whole run records",
        "the counters with them.",
    ]


def render(results: dict) -> str:
    when = results["finished_at"].replace("T", " ").replace("+00:00", " UTC")
    header = " | ".join(
        [
            "#",
            "scenario",
            "what was broken",
            "what was observed",
            *COLUMNS.values(),
            "other figures",
        ]
    )
    lines = [
        "# Reliability",
        "",
        "What the system does when things break, under load and under hostile input. Every row is",
        "made of end-to-end tests in `tests/e2e/` that start real processes (controller,",
        "PostgreSQL, Redis, workers, agents) on free ports, break something and assert what a user",
        "would check. Every figure below is a counter those tests measured; none is typed in.",
        "",
        f"Measured at commit `{results['commit']}`, in the run that finished {when}; load",
        f"average (1 min) {results['load_start']:.2f} when it started and "
        f"{results['load_end']:.2f} when it ended on a machine of {results['cpus']} cores shared",
        "with other work, so times are upper bounds of what an idle machine gives.",
        "",
        "What the columns count:",
        "",
        "- **requests checked**: requests the scenario made and checked the answer of (the /hit",
        "  calls to the workers while something was broken, the agents' requests under load, the",
        "  generated requests of the hostile and authentication runs);",
        "- **failed requests**: of those, the ones not answered as the scenario requires;",
        "- **unexpected 5xx**: 5xx answers counted by the controller itself",
        '  (`controller_requests_total{status=~"5.."}` from `/metrics`) or by the client, minus',
        "  those the scenario requires: a clean 503 while PostgreSQL is stopped is the designed",
        "  answer, not a failure, and is counted apart (`clean_503s_by_design`);",
        "- **versions lost**: published versions that never reached where the scenario looked",
        "  for them (the workers' /hit answers, the history, the agents' final version).",
        "",
        *_counters_note(results),
        "",
        f"| {header} |",
        "|" + "---|" * (5 + len(COLUMNS)),
    ]
    for key, scenario in sorted(SCENARIOS.items(), key=lambda item: item[1].number):
        parts = results["scenarios"][key]
        figures: dict[str, list] = {}
        observed = []
        for part in scenario.parts:
            observed.append(parts[part]["observed"])
            for name, value in parts[part]["figures"].items():
                figures.setdefault(name, []).append(value)
        main = []
        for name in COLUMNS:
            values = figures.pop(name, [])
            main.append(_cell(values[0] if len(values) == 1 else _sum(values)))
        other = "; ".join(
            f"{name}: {_cell(_sum(values) if len(values) > 1 else values[0])}"
            for name, values in sorted(figures.items())
        )
        text = " ".join(dict.fromkeys(observed))
        lines.append(
            f"| {scenario.number} | {scenario.title} (`{key}`) | {scenario.broken} | {text} | "
            + " | ".join(main)
            + f" | {other or '-'} |"
        )
    lines += [
        "",
        "Scenario 7 runs for 30 s rather than 60 s to keep the suite inside CI's time; the rate of",
        "change (one per second) and the number of agents (200) are as specified.",
        "",
        "## How this page is made and checked",
        "",
        "- Each test of a scenario calls `record()` (`tests/e2e/reliability.py`) with the counters",
        "  it measured. `record()` fails the test when a counter breaks the scenario's claim (a",
        "  failed request, an unexpected 5xx or a lost version where the claim is 0, fewer",
        "  generated examples or requests than the claim needs), so every run of the suite, in",
        "  CI too, measures the claims again and fails on a regression.",
        "- `record()` computes the requests checked and failed from the tally of outcomes the",
        "  test passes it, and the versions lost from the versions published and seen, and",
        "  keeps those counters with the figures.",
        "- One run writes one file, `tests/artifacts/reliability/latest.json`, with its commit",
        "  and time; the file of an earlier run is replaced, never merged.",
        "- After a whole run at a commit with no local changes,",
        "  `python -m tests.e2e.reliability` copies that file to `docs/reliability.json` and",
        "  renders this page from it. It refuses an incomplete run, one with local changes, or",
        "  one whose counters break a claim.",
        "- `tests/e2e/test_record.py` checks that this page is exactly the rendering of",
        "  `docs/reliability.json` (every row, every cell), that the results are complete and",
        "  hold every claim and follow from their per-run counters, that their commit is in",
        "  this repository's history, and that they were measured with the current scenario",
        "  definitions: changing a scenario makes the results stale and the test fails until",
        "  the suite is run again and the page regenerated.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    if not RUN_FILE.exists():
        sys.stderr.write(f"no {RUN_FILE.relative_to(ROOT)}: run pytest tests/e2e first\n")
        return 1
    results = json.loads(RUN_FILE.read_text())
    problems = problems_of(results)
    if problems:
        sys.stderr.write("the last run cannot make the page:\n  " + "\n  ".join(problems) + "\n")
        return 1
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    DOC.write_text(render(results))
    print(f"wrote {RESULTS.relative_to(ROOT)} and {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
