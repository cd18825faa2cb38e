"""docs/PERFORMANCE.md's tables are what the benchmarks' JSON under docs/bench/ renders, each
naming the commit it was measured at; each check is also shown failing on a broken input."""

import copy
import json
import re

import pytest

from bench import daemon_footprint, propagation, results

BLOCKS = [match["name"] for match in results.BLOCK.finditer(results.DOC.read_text())]
BENCHMARKS = [name for name in BLOCKS if name != "summary"]


def test_the_page_is_exactly_what_the_results_render():
    page = results.DOC.read_text()
    assert page == results.rendered(page)


def test_every_result_has_a_block_and_every_block_a_result():
    files = sorted(path.stem for path in results.RESULTS_DIR.glob("*.json"))
    assert sorted(BENCHMARKS) == files
    assert "summary" in BLOCKS


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_block_names_the_commit_machine_and_load_of_its_run(name):
    result = results.load(name)
    assert re.fullmatch(r"[0-9a-f]{40}", result["commit"])
    assert result["dirty"] is False, f"{name} was measured with local changes"
    for key in ("cpus", "cpu_model", "memory_gib", "kernel", "python"):
        assert result["machine"][key], key
    assert len(result["load_start"]) == 3 and len(result["load_end"]) == 3
    block = re.search(
        rf"<!-- bench:{name} -->\n(.*?)<!-- /bench:{name} -->", results.DOC.read_text(), re.S
    )[1]
    assert f"Measured at commit `{result['commit'][:12]}`" in block
    assert f"{result['load_start'][0]:.2f} at the start" in block


def test_a_hand_edited_figure_or_a_changed_result_is_caught(tmp_path, monkeypatch):
    page = results.DOC.read_text()
    # A figure typed into a table no longer matches the rendering.
    table_line = next(line for line in page.splitlines() if line.startswith("| watch (default)"))
    edited = page.replace(table_line, table_line.replace("|", "| 1.0 ms |", 1), 1)
    assert results.rendered(edited) != edited
    # A result that changes under the page: the page is no longer its rendering.
    for name in BENCHMARKS:
        (tmp_path / f"{name}.json").write_text((results.RESULTS_DIR / f"{name}.json").read_text())
    changed = json.loads((tmp_path / "propagation.json").read_text())
    changed["figures"]["watch_s"] = [value * 10 for value in changed["figures"]["watch_s"]]
    (tmp_path / "propagation.json").write_text(json.dumps(changed))
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    assert results.rendered(page) != page


def test_a_block_without_results_fails_to_render(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError):
        results.rendered("<!-- bench:propagation -->\n<!-- /bench:propagation -->\n")


def test_a_missed_target_is_not_called_met():
    figures = copy.deepcopy(results.load("propagation")["figures"])
    figures["watch_s"] = [0.5] * 50
    (row, *_) = propagation.summary(figures)
    assert row[3] == "**not met**" and row[2] == "500 ms"


def test_footprint_targets_are_judged_on_the_worst_run_in_megabytes():
    figures = copy.deepcopy(results.load("daemon_footprint")["figures"])
    # 34 MiB is 35.7 MB: over the agent's 35 MB although under 35 "MiB".
    figures["runs"][0]["agent_rss_kib"] = 34 * 1024
    figures["runs"][-1]["worker_startup_s"] = 1.0
    verdicts = {row[0]: row[3] for row in daemon_footprint.summary(figures)}
    runs = len(figures["runs"])
    assert verdicts[f"idle agent, RSS (max of {runs})"] == "**not met**"
    assert verdicts[f"worker start-up to ready (max of {runs})"] == "**not met**"
    figures["runs"] = [dict(run, agent_rss_kib=30 * 1024) for run in figures["runs"]]
    verdicts = {row[0]: row[3] for row in daemon_footprint.summary(figures)}
    assert verdicts[f"idle agent, RSS (max of {runs})"] == "met"


def test_p99_is_only_given_for_samples_over_100():
    assert results.p99_or_none(list(range(50))) is None
    assert results.p99_or_none(list(range(1000))) == 989


def test_the_prose_quotes_no_measured_figure():
    # Measured figures live in the generated blocks; the prose points at them.
    assert results.typed_figures(results.DOC.read_text()) == []


@pytest.mark.parametrize(
    "typed",
    [
        "**24.6 KiB per held watch before, 15.1 KiB after.**",
        "reports recorded in 7.2–10.6 s",
        "3.63 → 1.89 CPU-seconds",
        "about 360 a second",
        "the lookups at about 21% of the samples",
        "Targets: 1,000 agents all holding the content within 90 ms.",
    ],
)
def test_a_figure_typed_into_the_prose_is_refused(tmp_path, monkeypatch, capsys, typed):
    page = tmp_path / "PERFORMANCE.md"
    text = results.DOC.read_text()
    page.write_text(text.replace("\n## Heartbeats", f"\nThe run gave {typed}\n\n## Heartbeats", 1))
    assert results.typed_figures(page.read_text())
    # The page's own check refuses it as well, with the figure named.
    monkeypatch.setattr(results, "DOC", page)
    monkeypatch.setattr(results.sys, "argv", ["bench.results", "--check"])
    assert results.main() == 1
    assert "quotes figures outside its tables" in capsys.readouterr().err


def test_a_figure_in_a_generated_block_or_a_command_is_not_typed():
    page = (
        "Intro.\n\n```sh\npython -m bench.x --seconds 10\n```\n\n"
        "<!-- bench:propagation -->\n| 1.5 ms | 24.6 KiB |\n<!-- /bench:propagation -->\n"
    )
    assert results.typed_figures(page) == []
