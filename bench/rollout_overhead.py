"""Staged rollouts' cost on the watch: the fleet convergence benchmark on the tree before per-agent
targets came in and on this tree, back to back on the same machine.

    python -m bench.rollout_overhead --before /path/to/checkout [--agents 1000 10000] [--rounds 1]

`--before` is a checkout of the last commit without rollouts (1fd3dde, the newest commit that has
the convergence benchmark and no rollouts), with a virtualenv in `.venv`. Each round runs, for
each N, `python -m bench.convergence --agents N` in that checkout (keeping the figures it prints
as its JSON line) and then this tree's convergence run in this process, each on a database of its
own (the two schemas differ). Results go to docs/bench/rollout_overhead.json.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench import convergence, results
from bench.common import BENCH_DATABASE_URL, setup_many_connections

KEPT = (
    "agents",
    "converged",
    "errors",
    "holding_p50_ms",
    "holding_p99_ms",
    "holding_max_ms",
    "kib_per_held_watch",
)


# The convergence benchmark of the tree before keeps no samples: run it with its percentile
# wrapped, so that the holding times it computes its p50 from (its only call at 0.5) are printed
# too, as one more JSON line.
CAPTURE = """
import json, sys
import bench.convergence as convergence
kept = []
real = convergence.percentile
def percentile(values, fraction):
    if fraction == 0.5:
        kept.append(list(values))
    return real(values, fraction)
convergence.percentile = percentile
sys.argv = ["bench.convergence", *sys.argv[1:]]
convergence.main()
print(json.dumps({"holding_samples_ms": kept[-1]}))
"""


def before_spread(samples: list[float]) -> dict:
    """The holding figures as the tree before computes them from its samples."""
    return {
        "holding_p50_ms": round(results.percentile(samples, 0.5), 1),
        "holding_p99_ms": round(results.percentile(samples, 0.99), 1),
        "holding_max_ms": round(max(samples), 1),
    }


def after_spread(samples: list[float]) -> dict:
    """The holding figures as this tree's convergence run computes them from its samples."""
    spread = convergence.spread_of(samples)
    return {
        "holding_p50_ms": spread["p50"],
        "holding_p99_ms": spread["p99"] or spread["max"],
        "holding_max_ms": spread["max"],
    }


def run_before(tree: Path, agents: int, database: str) -> dict:
    """One convergence run in the checkout before rollouts; the figures of its JSON line."""
    # Its client names the host "bench", which its controller checks like any other.
    env = dict(os.environ, BENCH_DATABASE_URL=database, ALLOWED_HOSTS="bench,localhost,127.0.0.1")
    done = subprocess.run(
        [str(tree / ".venv" / "bin" / "python"), "-c", CAPTURE, "--agents", str(agents)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"agents"')]
    samples = [line for line in done.stdout.splitlines() if line.startswith('{"holding_samples')]
    if done.returncode != 0 or not lines or not samples:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
        raise SystemExit(f"the convergence run in {tree} failed (exit {done.returncode})")
    figures = json.loads(lines[-1])
    return {
        **{key: figures[key] for key in KEPT},
        "holding_samples_ms": json.loads(samples[-1])["holding_samples_ms"],
    }


def run_here(agents: int) -> dict:
    """One convergence run of this tree, without saving it as the convergence results."""
    run = convergence.run(agents, workers=2, fetch=False, per_process=10000)
    samples = run["samples_ms"]["holding"]
    return {
        "agents": run["agents"],
        "converged": run["converged"],
        "errors": run["errors"],
        **after_spread(samples),
        "kib_per_held_watch": round(convergence.per_held_watch(run), 1),
        "holding_samples_ms": samples,
    }


def commit_of(tree: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=True
    ).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True, help="checkout without rollouts")
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    before = args.before.resolve()
    setup_many_connections()
    started = results.start()
    runs = []
    for _ in range(args.rounds):
        for agents in args.agents:
            figures = run_before(before, agents, BENCH_DATABASE_URL + "_before")
            print(f"before N={agents}: {figures}", flush=True)
            runs.append({"tree": "before", **figures})
            figures = run_here(agents)
            print(f"after N={agents}: {figures}", flush=True)
            runs.append({"tree": "after", **figures})
    results.save(
        "rollout_overhead",
        {"before_commit": commit_of(before), "runs": runs},
        started,
    )


def render(figures: dict) -> str:
    lines = [
        f"Before: commit `{figures['before_commit'][:12]}` (no rollouts). After: this tree.",
        "",
        "| tree | N | holding / errors | p50 | p99 | max | controller memory per held watch |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in figures["runs"]:
        lines.append(
            f"| {run['tree']} | {run['agents']:,} | {run['converged']:,} / {run['errors']} | "
            f"{run['holding_p50_ms']:.0f} ms | {run['holding_p99_ms']:.0f} ms | "
            f"{run['holding_max_ms']:.0f} ms | {run['kib_per_held_watch']:.1f} KiB |"
        )
    return "\n".join(lines)


def check(figures: dict, *, required: bool) -> list[str]:
    """Where a run's p50, p99 and max do not follow from its holding times, each tree's by its
    own rule; with `required` (results of the current format), a run kept without them too."""
    problems = []
    for number, run in enumerate(figures["runs"], start=1):
        samples = run.get("holding_samples_ms")
        if samples is None:
            if required:
                problems.append(f"run {number}: kept without its holding times")
            continue
        compute = before_spread if run["tree"] == "before" else after_spread
        for key, value in compute(samples).items():
            if run.get(key) != value:
                problems.append(f"run {number}: {key} does not follow from its holding times")
    return problems


def summary(figures: dict) -> list[tuple[str, ...]]:
    rows = []
    for agents in sorted({run["agents"] for run in figures["runs"]}):
        pairs = {
            tree: max(
                run["holding_p99_ms"]
                for run in figures["runs"]
                if run["agents"] == agents and run["tree"] == tree
            )
            for tree in ("before", "after")
        }
        # Within a tenth (or 50 ms) of the tree before: the noise of one run on this machine.
        no_worse = pairs["after"] <= max(pairs["before"] * 1.1, pairs["before"] + 50)
        rows.append(
            (
                f"per-agent targets: convergence p99 at {agents:,} agents, before → after",
                "no worse",
                f"{pairs['before']:.0f} → {pairs['after']:.0f} ms",
                "met" if no_worse else "**not met**",
            )
        )
    return rows


if __name__ == "__main__":
    main()
