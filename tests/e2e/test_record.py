"""docs/RELIABILITY.md is the rendering of docs/reliability.json, whose counters are complete,
hold every claim, and come from a commit of this history and the current scenario definitions.
Each check is also shown failing on a deliberately broken input."""

import copy
import json
import re
import subprocess

import pytest

from tests.e2e import reliability
from tests.e2e.reliability import (
    DOC,
    FORMAT,
    RESULTS,
    ROOT,
    SCENARIOS,
    page_problems,
    problems_of,
    record,
)

E2E = ROOT / "tests" / "e2e"


def committed() -> dict:
    return json.loads(RESULTS.read_text())


def test_the_page_is_exactly_the_rendering_of_the_committed_results():
    assert page_problems(DOC.read_text(), committed()) == []


def test_the_committed_results_are_complete_and_hold_every_claim():
    assert problems_of(committed()) == []


def test_the_committed_results_were_measured_at_a_commit_of_this_history():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    commit = committed()["commit"]
    ancestor = subprocess.run(
        ["git", "merge-base", "--is-ancestor", commit, "HEAD"],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert ancestor.returncode == 0, f"{commit} is not in the history of HEAD"


def test_every_part_names_a_test_that_exists_and_records_its_scenario():
    sources = {path.name: path.read_text() for path in E2E.glob("test_*.py")}
    recorded = set()
    for text in sources.values():
        recorded |= set(re.findall(r'record\(\s*"([a-z-]+)"', text))
    assert recorded == set(SCENARIOS)
    for key, scenario in SCENARIOS.items():
        for part in scenario.parts:
            module, _, function = part.partition("::")
            assert module in sources, part
            assert f"def {function}(" in sources[module], part
            assert f'"{key}"' in sources[module], (key, module)


# The checks above, each failing on a broken input ------------------------------------------


def test_a_hand_edited_cell_no_longer_matches_the_rendering(tmp_path):
    page = tmp_path / "RELIABILITY.md"
    text = DOC.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 5 |"))
    cells = row.split(" | ")
    cells[5] = "0.01"  # time to recover
    cells[6] = "999999"  # requests checked
    page.write_text(text.replace(row, " | ".join(cells)))
    number = text.splitlines().index(row) + 1

    # The check the first test makes, on the edited copy.
    problems = page_problems(page.read_text(), committed())

    assert len(problems) == 1, problems
    assert problems[0].startswith(f"line {number}: ") and "999999" in problems[0]


def test_a_sentence_typed_into_the_page_or_a_line_dropped_is_caught(tmp_path):
    page = tmp_path / "RELIABILITY.md"
    page.write_text(DOC.read_text().replace("\n## How", "\nNo request ever failed.\n\n## How"))
    assert any("No request ever failed" in p for p in page_problems(page.read_text(), committed()))
    page.write_text(DOC.read_text().rstrip("\n"))
    assert page_problems(page.read_text(), committed())


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda r: r["scenarios"].pop("load"), "load: no results from"),
        (lambda r: r["scenarios"]["hostile-input"].popitem(), "hostile-input: no results from"),
        (lambda r: r.update(commit="typed-in"), "no commit recorded"),
        (lambda r: r.pop("finished_at"), "no finished_at recorded"),
        (lambda r: r.pop("load_end"), "no load_end recorded"),
        (lambda r: r.update(dirty=True), "measured with local changes"),
        (lambda r: r.update(fingerprint="0" * 16), "stale"),
        (lambda r: _figures(r, "postgres-stopped").update(unexpected_5xx=9), "the claim is 0"),
        (lambda r: _figures(r, "load").update(failed=1), "failed is 1"),
        (lambda r: _figures(r, "redis-stopped").update(versions_lost=1), "versions_lost is 1"),
        (lambda r: _figures(r, "concurrent-changes").pop("served"), "served is not a measured"),
        (lambda r: _figures(r, "load").update(served="7284"), "served is not a measured"),
        (lambda r: _figures(r, "properties").update(generated_examples=0), "at least 50"),
        (lambda r: r["scenarios"]["load"].update({"test_x.py::test_y": {}}), "not one of its"),
    ],
)
def test_broken_results_are_refused(breakage, expected):
    results = copy.deepcopy(committed())
    breakage(results)
    problems = problems_of(results)
    assert any(expected in problem for problem in problems), problems


def _figures(results: dict, key: str) -> dict:
    return next(iter(results["scenarios"][key].values()))["figures"]


# Figures kept with the per-run counters they come from ---------------------------------------


@pytest.fixture
def run_file(tmp_path, monkeypatch):
    """record() as the concurrent-changes test calls it, writing to a run file in tmp_path."""
    monkeypatch.setattr(reliability, "ARTIFACTS", tmp_path)
    monkeypatch.setattr(reliability, "RUN_FILE", tmp_path / "latest.json")
    monkeypatch.setenv(
        "PYTEST_CURRENT_TEST", "tests/e2e/test_load.py::test_concurrent_changes (call)"
    )
    record(
        "concurrent-changes",
        "50 changes.",
        outcomes={"201": 50},
        failed_outcomes=[],
        versions=(range(1, 51), list(range(50, 0, -1))),
        recover_s=1.5,
        unexpected_5xx=0,
        changes=50,
        changes_per_s=20.0,
    )
    return tmp_path / "latest.json"


def _part(results: dict) -> dict:
    return results["scenarios"]["concurrent-changes"]["test_load.py::test_concurrent_changes"]


def test_record_computes_the_counted_figures_and_keeps_their_counters(run_file):
    results = json.loads(run_file.read_text())
    assert results["format"] == FORMAT
    part = _part(results)
    assert {k: part["figures"][k] for k in ("served", "failed", "versions_lost")} == {
        "served": 50,
        "failed": 0,
        "versions_lost": 0,
    }
    assert part["counters"]["outcomes"] == {"201": 50}
    assert len(part["counters"]["versions_published"]) == 50
    concurrent_problems = [p for p in problems_of(results) if p.startswith("concurrent-changes")]
    assert concurrent_problems == []


def test_a_failure_in_the_counters_breaks_the_claim_when_recorded(run_file, monkeypatch):
    monkeypatch.setenv(
        "PYTEST_CURRENT_TEST", "tests/e2e/test_load.py::test_concurrent_changes (call)"
    )
    with pytest.raises(AssertionError, match="failed is 1"):
        record(
            "concurrent-changes",
            "49 of 50.",
            outcomes={"201": 49, "500": 1},
            failed_outcomes=["500"],
            versions=(range(1, 51), range(1, 51)),
            recover_s=1.5,
            unexpected_5xx=0,
            changes=50,
            changes_per_s=20.0,
        )
    with pytest.raises(TypeError, match="come from the counters"):
        record("concurrent-changes", "typed", outcomes={"201": 50}, served=50)


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda p: p["figures"].update(served=5), "served is 5, its counters give 50"),
        (lambda p: p["figures"].update(served=500), "served is 500, its counters give 50"),
        (lambda p: p["counters"]["outcomes"].update({"201": 5}), "its counters give 5"),
        (lambda p: p["counters"]["versions_seen"].pop(), "versions_lost is 0, its counters give 1"),
        (lambda p: p.pop("counters"), "served is kept without its counters"),
        (lambda p: p["counters"].pop("versions_published"), "versions_lost is kept without"),
    ],
)
def test_a_results_file_whose_figures_do_not_follow_from_its_counters_is_refused(
    run_file, tmp_path, breakage, expected
):
    results = json.loads(run_file.read_text())
    breakage(_part(results))
    edited = tmp_path / "reliability.json"
    edited.write_text(json.dumps(results))

    problems = problems_of(json.loads(edited.read_text()))

    assert any(expected in problem for problem in problems), problems


def test_counters_are_required_from_the_second_format_on_and_not_before():
    # A file of the first format kept the counted figures without the counters behind them
    # (nothing can recompute those; the page says so); from FORMAT on, a figure without its
    # counters is refused.
    results = copy.deepcopy(committed())
    assert results.get("format") == FORMAT, "the committed results keep their counters"
    for parts in results["scenarios"].values():
        for entry in parts.values():
            entry.pop("counters", None)
    assert any("kept without its counters" in problem for problem in problems_of(results))
    results.pop("format")
    assert not any("counters" in problem for problem in problems_of(results))
