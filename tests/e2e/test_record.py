"""docs/RELIABILITY.md is the rendering of docs/reliability.json, whose counters are complete,
hold every claim, and come from a commit of this history and the current scenario definitions.
Each check is also shown failing on a deliberately broken input."""

import copy
import json
import re
import subprocess

import pytest

from tests.e2e.reliability import DOC, RESULTS, ROOT, SCENARIOS, problems_of, render

E2E = ROOT / "tests" / "e2e"


def committed() -> dict:
    return json.loads(RESULTS.read_text())


def test_the_page_is_exactly_the_rendering_of_the_committed_results():
    assert DOC.read_text() == render(committed())


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


def test_a_hand_edited_cell_no_longer_matches_the_rendering():
    page = render(committed())
    row = next(line for line in page.splitlines() if line.startswith("| 5 |"))
    cells = row.split(" | ")
    cells[5] = "0.01"  # time to recover
    cells[6] = "999999"  # requests checked
    edited = page.replace(row, " | ".join(cells))
    assert edited != page
    # The same comparison the first test makes, on the edited page.
    assert edited != render(committed())


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
