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

from bench import results
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


def run_before(tree: Path, agents: int, database: str) -> dict:
    """One convergence run in the checkout before rollouts; the figures of its JSON line."""
    env = dict(os.environ, BENCH_DATABASE_URL=database)
    done = subprocess.run(
        [
            str(tree / ".venv" / "bin" / "python"),
            "-m",
            "bench.convergence",
            "--agents",
            str(agents),
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"agents"')]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
        raise SystemExit(f"the convergence run in {tree} failed (exit {done.returncode})")
    figures = json.loads(lines[-1])
    return {key: figures[key] for key in KEPT}


def run_here(agents: int) -> dict:
    """One convergence run of this tree, without saving it as the convergence results."""
    from bench import convergence

    run = convergence.run(agents, workers=2, fetch=False, per_process=10000)
    return {
        "agents": run["agents"],
        "converged": run["converged"],
        "errors": run["errors"],
        "holding_p50_ms": run["holding_ms"]["p50"],
        "holding_p99_ms": run["holding_ms"]["p99"] or run["holding_ms"]["max"],
        "holding_max_ms": run["holding_ms"]["max"],
        "kib_per_held_watch": round(convergence.per_held_watch(run), 1),
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
