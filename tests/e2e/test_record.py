"""docs/RELIABILITY.md cannot drift from the suite: its rows are exactly the scenarios that the
tests record, and each scenario names a test that exists and records it."""

import re

from tests.e2e.reliability import DOC, ROOT, SCENARIOS, load_results, render

E2E = ROOT / "tests" / "e2e"


def test_every_scenario_is_recorded_by_a_test_that_exists():
    sources = {path.name: path.read_text() for path in E2E.glob("test_*.py")}
    recorded = set()
    for text in sources.values():
        recorded |= set(re.findall(r'record\(\s*"([a-z-]+)"', text))
    assert recorded == set(SCENARIOS)
    for key, scenario in SCENARIOS.items():
        module, _, function = scenario.test.partition("::")
        assert module in sources, scenario.test
        assert f'"{key}"' in sources[module], (key, module)
        if function:
            assert f"def {function}(" in sources[module], scenario.test


def test_the_document_has_one_row_per_scenario_with_nothing_lost():
    rows = [line for line in DOC.read_text().splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(row.split("|")[1]) for row in rows] == sorted(s.number for s in SCENARIOS.values())
    for row, (key, scenario) in zip(
        rows, sorted(SCENARIOS.items(), key=lambda item: item[1].number), strict=True
    ):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1] == f"{scenario.title} (`{key}`)"
        assert cells[2] == scenario.broken
        assert cells[3] != "not run", f"{key} has no figures: regenerate the document"
        assert cells[6] in ("0", "-"), f"{key}: 5xx"
        assert cells[7] in ("0", "-"), f"{key}: versions lost"


def test_the_document_is_what_the_recorded_results_render():
    # When this run recorded every scenario, the document's layout must match its rendering:
    # same rows in the same order (the figures themselves differ from run to run).
    results = load_results()
    if set(results) != set(SCENARIOS):
        return
    expected = [line.split("|")[1:4] for line in render(results).splitlines() if "| " in line]
    actual = [line.split("|")[1:4] for line in DOC.read_text().splitlines() if "| " in line]
    assert actual == expected
