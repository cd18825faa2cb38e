"""Benchmark results as data, and docs/PERFORMANCE.md's tables rendered from them.

Every benchmark ends with `save(name, figures, started)`: its figures, the command that made
them, the commit, the machine, the date and the load average at the start and the end go to
docs/bench/<name>.json. Each benchmark module also defines

    render(figures) -> str          the markdown of its section's tables
    summary(figures) -> list[tuple] rows (benchmark, target, measured, verdict) of the summary

and may define `check(figures, required=...) -> list[str]`: where the summaries its figures keep
(a p50, a max) do not follow from the raw samples kept beside them.

`save` also keeps what the run's figures rendered to at the time (`derived`: the tables and the
summary rows); `problems` refuses a file whose figures no longer render to that, or whose
summaries do not follow from its samples, and the page is not rendered from such a file. Files
of FORMAT 2 must carry both (see KEPT for what each keeps); files written before (no "format")
are checked on what they carry.

docs/PERFORMANCE.md holds, for each benchmark, a block

    <!-- bench:<name> -->
    ...generated...
    <!-- /bench:<name> -->

which `python -m bench.results` rewrites from the JSON (the prose around the blocks is
written by hand), plus one `<!-- bench:summary -->` block made of every benchmark's summary
rows. tests/test_performance_doc.py checks that the page is exactly what this renders, and
that the prose quotes no measured figure: it says what the tables show and points at them, and
the only figures it carries are settings, targets and arithmetic on them (STATED).
"""

import importlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "docs" / "bench"
DOC = ROOT / "docs" / "PERFORMANCE.md"
BLOCK = re.compile(r"<!-- bench:(?P<name>[a-z_]+) -->\n.*?<!-- /bench:(?P=name) -->", re.S)


# A figure with a unit of time, memory or rate, a before -> after, or a range of them: what a
# measurement gives. The prose may carry one only inside a phrase of STATED.
MEASURED_FIGURE = re.compile(
    r"\d[\d,.]*(?:\s*[–-]\s*\d[\d,.]*)?\s*"
    r"(?:ms|s|µs|KiB|MiB|GiB|kB|MB|req/s|/s|%|x|times|a second|per second|samples)(?!\w)"
    r"|\d[\d,.]*\s*(?:→|->)\s*\d"
)
# The figures the prose states rather than measures: benchmark settings, targets and
# configuration, each in the phrase that says so (whitespace as in one line).
STATED = (
    "made 0.2–0.6 s after the previous one arrived",  # the benchmark's pace
    # targets
    "1,000 agents all holding the content within 150 ms; 10,000 within 500 ms, no error; 20,000 "
    "held watches all converging, no error, max ≤ 2.5 s; 50,000 on 4 processes likewise; at most "
    "16 KiB per held watch; every report after a change recorded within 3 s; 10,000 held watches "
    "adding at most 5% of one core to the controller's CPU between changes.",
    "for 70 seconds in which the agents",  # the benchmark's --idle
    "60 s and the controller's jitter of up to a sixteenth",
    "when their wait runs out",
    "agent reporting every 10 s keeps one warm within the controller's 75 s keep-alive",
    "`HEARTBEAT_FLUSH_SECONDS` (0.1 s)",
    "At a 10 s interval",
    "Throughput: wrk, 2 threads, 64 connections, for 10 s,",
    "every agent once per 10 s, spread evenly, over 100 keep-alive connections, for 20 s;",
    "Targets: at least 5,000 heartbeats a second recorded; the 10,000 reports after a change "
    "recorded within 3 s (the convergence run above); a steady 10,000 agents at 10 s within a "
    "quarter of the controller's CPU.",
    "answers come back, for 10 s.",
    "**Target: at most 1 ms added at the median",
    "16 / 2 = 8 times over. Any proxy on those cores would add 8 times its CPU per request; to "
    "add at most 1 ms it would have to spend under 1/8 ms per request",
    "a 1 s SYN retry",  # the kernel's
    "after 2 s of idling",  # the benchmark's --idle
)


def typed_figures(page: str) -> list[str]:
    """The measured-looking figures of `page` outside its generated blocks and its commands,
    other than those STATED: each is a number typed in by hand that no test reads."""
    prose = BLOCK.sub("", page)
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    prose = re.sub(r"[ \t]*\n[ \t]*", " ", prose)
    for phrase in STATED:
        prose = prose.replace(phrase, "")
    return [
        prose[max(0, match.start() - 40) : match.end() + 10].strip()
        for match in MEASURED_FIGURE.finditer(prose)
    ]


# Results files written from this format on keep `derived` and every raw sample their
# benchmark's check asks for.
FORMAT = 2
# What each benchmark keeps that its summaries are computed from: where the figures are the raw
# samples or counters themselves, the derived tables are computed from them; where they are
# summaries (a p50, a rate), the module's `check` computes them again from the samples kept.
KEPT = {
    "propagation": "every change's delay",
    "change_rate": "every change's latency, per run",
    "watch_fanout": "every agent's latency, per run",
    "scope_fanout": "every answered agent's latency, per change",
    "daemon_footprint": "every run's RSS and start-up time",
    "heartbeats": "the run's request and recorded counters",
    "convergence": "every agent's times; its check computes the spreads again",
    "convergence_stream": "every agent's times; its check computes the spreads again",
    "rollout_overhead": "every agent's holding time in both trees; its check computes the spreads",
    "worker_hit": "every request's latency and the rate's count; its check computes them again",
    "version_throughput": "wrk's counters and latency histogram; its check computes them again",
}


class ResultsMismatch(ValueError):
    """A results file whose figures do not follow from its samples, or no longer render to the
    tables its run rendered."""


def percentile(values: list[float], fraction: float) -> float:
    """The value at `fraction` of the sorted sample (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def p99_or_none(values: list[float]) -> float | None:
    """p99 only where it differs from the maximum by construction: below 101 values the
    nearest rank of 0.99 is the last one, so the maximum is what is reported instead."""
    return percentile(values, 0.99) if len(values) > 100 else None


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


def machine() -> dict:
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        kib = int(meminfo.readline().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(kib / 1024 / 1024),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def start() -> dict:
    """What a benchmark notes before it starts measuring."""
    return {"started_at": time.time(), "load_start": [round(v, 2) for v in os.getloadavg()]}


def save(name: str, figures: dict, started: dict) -> Path:
    commit = _git("rev-parse", "HEAD")
    # Local changes to the code measured; the results files themselves do not count.
    dirty = bool(
        _git(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)docs/bench",
            ":(exclude)docs/PERFORMANCE.md",
        )
    )
    module = importlib.import_module(f"bench.{name}")
    result = {
        "format": FORMAT,
        "benchmark": name,
        "command": " ".join(["python -m", f"bench.{name}", *sys.argv[1:]]),
        "commit": commit,
        "dirty": dirty,
        "date": datetime.fromtimestamp(started["started_at"], UTC).isoformat(timespec="minutes"),
        "machine": machine(),
        "load_start": started["load_start"],
        "load_end": [round(v, 2) for v in os.getloadavg()],
        "figures": figures,
        "derived": derived(module, figures),
    }
    problems = check_figures(name, module, result)
    if problems:
        raise ResultsMismatch(f"{name}: " + "; ".join(problems))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def derived(module, figures: dict) -> dict:
    """What the figures render to: the section's tables and its summary rows."""
    return {
        "tables": module.render(figures).rstrip(),
        "summary": [list(row) for row in module.summary(figures)],
    }


def check_figures(name: str, module, result: dict) -> list[str]:
    current = result.get("format", 1) >= FORMAT
    check = getattr(module, "check", None)
    problems = [] if check is None else check(result["figures"], required=current)
    kept = result.get("derived")
    if kept is None:
        if current:
            problems.append("no derived tables and summary kept with the figures")
    else:
        now = derived(module, result["figures"])
        if kept["tables"] != now["tables"]:
            problems.append("the figures no longer render to the tables their run rendered")
        if kept["summary"] != now["summary"]:
            problems.append("the figures no longer give the summary their run gave")
    return problems


def problems(name: str) -> list[str]:
    """Why docs/bench/<name>.json cannot stand behind its block; empty when it can."""
    module = importlib.import_module(f"bench.{name}")
    return [f"{name}: {problem}" for problem in check_figures(name, module, load(name))]


def load(name: str) -> dict:
    return json.loads((RESULTS_DIR / f"{name}.json").read_text())


def provenance(result: dict) -> str:
    """The line under each block's tables: where, when and at which commit they were measured."""
    m = result["machine"]
    when = result["date"].replace("T", " ").replace("+00:00", " UTC")
    local = " with local changes" if result["dirty"] else ""
    return (
        f"Measured at commit `{result['commit'][:12]}`{local}, {when}, with "
        f"`{result['command']}`; {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}; load average (1 min) "
        f"{result['load_start'][0]:.2f} at the start, {result['load_end'][0]:.2f} at the end."
    )


def render_block(name: str) -> str:
    result = load(name)
    module = importlib.import_module(f"bench.{name}")
    refused = check_figures(name, module, result)
    if refused:
        raise ResultsMismatch(f"{name}: " + "; ".join(refused))
    return f"{module.render(result['figures']).rstrip()}\n\n{provenance(result)}"


def render_summary(names: list[str]) -> str:
    lines = ["| benchmark | target | measured | |", "|---|---|---|---|"]
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        for row in module.summary(load(name)["figures"]):
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def rendered(page: str) -> str:
    """`page` with every block rewritten from the results."""
    names = [match["name"] for match in BLOCK.finditer(page) if match["name"] != "summary"]

    def block(match: re.Match) -> str:
        name = match["name"]
        body = render_summary(names) if name == "summary" else render_block(name)
        return f"<!-- bench:{name} -->\n{body}\n<!-- /bench:{name} -->"

    return BLOCK.sub(block, page)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> int:
    page = DOC.read_text()
    try:
        new = rendered(page)
    except ResultsMismatch as exc:
        sys.stderr.write(f"refused: {exc}\n")
        return 1
    if "--check" in sys.argv:
        if new != page:
            sys.stderr.write(
                f"{_shown(DOC)} differs from its results: run python -m bench.results\n"
            )
            return 1
        typed = typed_figures(page)
        if typed:
            sys.stderr.write(
                f"{_shown(DOC)} quotes figures outside its tables (point at the table "
                "instead):\n  " + "\n  ".join(typed) + "\n"
            )
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
