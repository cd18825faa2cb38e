"""docs/PERFORMANCE.md's tables are what the benchmarks' JSON under docs/bench/ renders, each
naming the commit it was measured at; each check is also shown failing on a broken input."""

import copy
import json
import re

import pytest

from bench import (
    convergence,
    daemon_footprint,
    propagation,
    results,
    rollout_overhead,
    version_throughput,
    worker_hit,
)

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
    # ... and no longer follows what its run rendered: it is refused, not rendered.
    with pytest.raises(results.ResultsMismatch, match="propagation"):
        results.rendered(page)


def test_a_block_without_results_fails_to_render(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError):
        results.rendered("<!-- bench:propagation -->\n<!-- /bench:propagation -->\n")


def test_a_missed_target_is_not_called_met():
    figures = copy.deepcopy(results.load("propagation")["figures"])
    figures["watch_s"] = [0.5] * 50
    (row, *_) = propagation.summary(figures)
    assert row[0].endswith("(max of 50)")
    assert row[3] == "**not met**" and row[2] == "500.0 ms"


def test_the_admin_write_is_judged_on_its_median_and_p99():
    quick = [0.004] * 150 + [0.009] * 50
    rows = {row[0]: row[1:] for row in propagation.summary({"put_s": quick})}
    put = "a change's `PUT /config/admin` (p50 / p99 of 200)"
    assert rows[put] == ("≤ 5 ms / ≤ 10 ms", "4.0 ms / 9.0 ms", "met")
    slow_tail = [0.004] * 150 + [0.012] * 50
    rows = {row[0]: row[1:] for row in propagation.summary({"put_s": slow_tail})}
    assert rows[put] == ("≤ 5 ms / ≤ 10 ms", "4.0 ms / 12.0 ms", "**not met**")


def test_idle_cpu_is_judged_up_to_10000_watches_and_reported_beyond():
    figures = copy.deepcopy(results.load("convergence")["figures"])
    run = max(figures["runs"], key=lambda run: run["agents"])
    quiet = dict(run, agents=10000, idle_seconds=60, idle_cpu_share=0.069, bare_cpu_share=0.02)
    busy = dict(quiet, idle_cpu_share=0.071)
    large = dict(busy, agents=50000)
    key = (
        "held watches between changes: the controller CPU they add, share of one core "
        "(60 s; in all, and holding nothing)"
    )
    for each, expected in (
        (quiet, ("≤ 5%", "4.9% (6.9%; 2.0%)", "met")),
        (busy, ("≤ 5%", "5.1% (7.1%; 2.0%)", "**not met**")),
        (large, ("(report)", "5.1% (7.1%; 2.0%)", "")),
    ):
        rows = {row[0]: row[1:] for row in convergence.summary({"runs": [each]})}
        assert rows[f"{each['agents']:,} {key}"] == expected


def test_a_run_of_50000_agents_is_judged_on_its_max_errors_and_memory():
    figures = copy.deepcopy(results.load("convergence")["figures"])
    largest = max(figures["runs"], key=lambda run: run["agents"])
    run = dict(largest, agents=50000, converged=50000, held_before_change=50000, errors=0)
    run["holding_ms"] = dict(largest["holding_ms"], max=2400.0)
    run["rss_held_kib"] = run["rss_idle_kib"] + 50000 * 15
    rows = {row[0]: row[1:] for row in convergence.summary({"runs": [run]})}
    holding = "one change → 50,000 agents holding the new content (max, errors)"
    assert rows[holding] == ("≤ 2,500 ms, 0", "2.40 s, 0", "met")
    assert rows["controller memory per held watch (50,000)"] == ("≤ 16 KiB", "15.0 KiB", "met")
    late = dict(run, holding_ms=dict(run["holding_ms"], max=2600.0))
    assert dict((row[0], row[3]) for row in convergence.summary({"runs": [late]}))[holding] == (
        "**not met**"
    )
    failed = dict(run, converged=49999, errors=1)
    rows = {row[0]: row[1:] for row in convergence.summary({"runs": [failed]})}
    assert rows[holding] == ("≤ 2,500 ms, 0", "2.40 s, 1", "**not met**")


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


# Results tied to their run -------------------------------------------------------------------


def copy_results(tmp_path, monkeypatch) -> None:
    for name in BENCHMARKS:
        (tmp_path / f"{name}.json").write_text((results.RESULTS_DIR / f"{name}.json").read_text())
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)


def edit(tmp_path, name: str, change) -> None:
    path = tmp_path / f"{name}.json"
    result = json.loads(path.read_text())
    change(result)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_results_file_follows_from_what_its_run_kept(name):
    assert results.problems(name) == []


def test_every_results_file_says_what_it_keeps_and_keeps_it():
    assert sorted(results.KEPT) == sorted(BENCHMARKS)
    for name in BENCHMARKS:
        assert results.load(name)["format"] == results.FORMAT, name


def _divide(value):
    if isinstance(value, dict):
        return {key: _divide(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_divide(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value / 10
    return value


def test_figures_divided_by_ten_and_rendered_again_are_refused(tmp_path, monkeypatch, capsys):
    copy_results(tmp_path, monkeypatch)
    edit(tmp_path, "propagation", lambda r: r.update(figures=_divide(r["figures"])))

    assert any("no longer render" in problem for problem in results.problems("propagation"))
    monkeypatch.setattr(results.sys, "argv", ["bench.results"])
    page = tmp_path / "PERFORMANCE.md"
    page.write_text(results.DOC.read_text())
    monkeypatch.setattr(results, "DOC", page)
    assert results.main() == 1
    assert "refused: propagation" in capsys.readouterr().err
    assert page.read_text() == results.DOC.read_text()  # nothing rewritten


def test_an_edited_summary_of_a_file_without_samples_is_refused(tmp_path, monkeypatch):
    copy_results(tmp_path, monkeypatch)
    edit(tmp_path, "convergence", lambda r: r["figures"]["runs"][1]["holding_ms"].update(p99=1.0))
    assert any("no longer" in problem for problem in results.problems("convergence"))


def test_a_new_file_without_its_derived_tables_is_refused(tmp_path, monkeypatch):
    copy_results(tmp_path, monkeypatch)
    edit(tmp_path, "propagation", lambda r: (r.pop("derived"), r.update(format=results.FORMAT)))
    assert results.problems("propagation") == [
        "propagation: no derived tables and summary kept with the figures"
    ]


def _run_with_samples() -> dict:
    samples = {
        "told": [10.0, 12.5, 30.1],
        "holding": [11.0, 13.5, 31.1, 40.0],
        "answered": [20.0, 21.0, 22.0, 50.2],
    }
    run = {f"{key}_ms": convergence.spread_of(values) for key, values in samples.items()}
    return {**run, "samples_ms": samples}


def test_spreads_are_computed_again_from_the_samples_kept():
    figures = {"runs": [_run_with_samples()]}
    assert convergence.check(figures, required=True) == []
    measured = figures["runs"][0]["holding_ms"]["p50"]
    figures["runs"][0]["holding_ms"]["p50"] = measured / 10
    assert convergence.check(figures, required=True) == [
        "run 1: holding_ms does not follow from its samples"
    ]
    figures["runs"][0]["holding_ms"]["p50"] = measured
    figures["runs"][0]["samples_ms"]["answered"] = [2.0, 2.1, 2.2, 5.0]  # samples divided
    assert convergence.check(figures, required=True) == [
        "run 1: answered_ms does not follow from its samples"
    ]


def test_spreads_without_samples_are_refused_only_in_the_new_format():
    run = _run_with_samples()
    del run["samples_ms"]
    assert convergence.check({"runs": [run]}, required=False) == []
    assert convergence.check({"runs": [run]}, required=True) == [
        "run 1: spreads kept without their samples"
    ]


def test_worker_hit_figures_are_computed_again_from_every_request_s_latency():
    samples = {"direct": [0.2, 0.25, 0.3], "hit": [0.5, 0.6, 0.9]}
    hit = {"clients": 1, **worker_hit.hit_figures(samples, 1), "samples_ms": samples}
    health_samples = [0.2, 0.3, 0.4]
    latency = worker_hit.latency_figures(health_samples)
    run = {
        "health_latency": {**latency, "samples_ms": health_samples},
        "hits": [hit],
        "health_throughput": {
            "clients": 16,
            "seconds": 5.0,
            "requests": 1000,
            "requests_per_second": 200.0,
        },
    }
    figures = {"runs": [run]}
    assert worker_hit.check(figures, required=True) == []
    hit["added_p50_ms"] /= 10
    assert worker_hit.check(figures, required=True) == [
        "run 1, 1 client(s): added_p50_ms does not follow from samples"
    ]
    hit["added_p50_ms"] *= 10
    run["health_latency"]["samples_ms"] = [value / 10 for value in health_samples]
    assert "run 1, health latency: p50_ms does not follow from samples" in worker_hit.check(
        figures, required=True
    )
    run["health_latency"]["samples_ms"] = health_samples
    run["health_throughput"]["requests_per_second"] = 2000.0
    assert worker_hit.check(figures, required=True) == [
        "run 1: GET /health rate does not follow from its count"
    ]
    del run["health_throughput"]["requests"], hit["samples_ms"]
    assert len(worker_hit.check(figures, required=True)) == 2
    assert worker_hit.check(figures, required=False) == []


def test_wrk_figures_are_computed_again_from_its_counters_and_histogram():
    counts = {"requests": 1000, "duration_us": 5_000_000, "status_errors": 0}
    histogram = [[900, 500], [1100, 490], [5000, 10]]
    case = {"request": "GET /x", **version_throughput.case_figures(counts, histogram)}
    case.update(counts=counts, latency_histogram_us=histogram)
    # wrk's rule: the first latency whose running count reaches round(p% of the count + 0.5),
    # rounding half away from zero: rank 501 for the p50 (past the 500 at 900 µs), 991 for the
    # p99 (past the 990 up to 1,100 µs).
    assert (case["p50_ms"], case["p99_ms"], case["requests_per_second"]) == (1.1, 5.0, 200.0)
    figures = {"cases": [case]}
    assert version_throughput.check(figures, required=True) == []
    case["requests_per_second"] = 2000.0
    assert version_throughput.check(figures, required=True) == [
        "GET /x: requests_per_second does not follow from wrk's counts"
    ]
    case["requests_per_second"] = 200.0
    case["latency_histogram_us"] = [[90, 500], [110, 490], [500, 10]]  # samples divided
    assert len(version_throughput.check(figures, required=True)) == 2
    del case["counts"]
    assert version_throughput.check(figures, required=True) == [
        "GET /x: kept without wrk's counters and histogram"
    ]


def test_rollout_overhead_holding_times_give_each_tree_s_figures_by_its_own_rule():
    samples = [float(value) for value in range(1, 202)]
    before = {"tree": "before", **rollout_overhead.before_spread(samples)}
    after = {"tree": "after", **rollout_overhead.after_spread(samples)}
    figures = {
        "runs": [
            {**before, "holding_samples_ms": samples},
            {**after, "holding_samples_ms": samples},
        ]
    }
    assert rollout_overhead.check(figures, required=True) == []
    figures["runs"][1]["holding_p99_ms"] /= 10
    assert rollout_overhead.check(figures, required=True) == [
        "run 2: holding_p99_ms does not follow from its holding times"
    ]
    figures["runs"][1]["holding_p99_ms"] *= 10
    figures["runs"][0]["holding_samples_ms"] = [value / 10 for value in samples]
    assert len(rollout_overhead.check(figures, required=True)) == 3
    del figures["runs"][0]["holding_samples_ms"]
    assert rollout_overhead.check(figures, required=True) == [
        "run 1: kept without its holding times"
    ]
    assert rollout_overhead.check(figures, required=False) == []
