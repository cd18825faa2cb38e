"""The data plane's footprint: memory and start-up of an idle agent and an idle worker.

    python -m bench.daemon_footprint [--runs 5] [--idle 3]

Agents and workers run next to every service of a fleet, so their memory is paid thousands of
times. Each run starts the real processes through their interface, `manage.py run_worker` and
`manage.py run_agent`, on free ports of 127.0.0.1, and measures:

- start-up to ready: from the spawn until the worker answers GET /health, and until the agent
  answers GET /metrics (`--metrics-bind`; its controller is a stub holding the watch, and its
  state dir holds credentials, so it does not register);
- memory: the resident set (RSS) after `--idle` seconds of idling, the worker's main process
  and its serving process together.

The figures, with the machine's load average (other work slows start-up more than it changes
memory), go to docs/bench/daemon_footprint.json, from which `python -m bench.results` renders
the section of docs/PERFORMANCE.md (see bench/results.py).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench import results
from bench.common import ROOT, rss_kib
from tests.support.agent import StubController, write_credentials
from tests.support.processes import base_env, free_port, manage

# At least 32 characters: shorter keys are refused at start-up.
INTERNAL_KEY = "bench-internal-key-0123456789abcdef"
# Memory targets are in MB (10^6 bytes), compared with the resident set in bytes.
RSS_TARGET_MB = {"agent": 35, "worker": 90}
STARTUP_TARGET_S = 1.0


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        manage(*args), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _ready_after(url: str, process: subprocess.Popen, started: float) -> float:
    deadline = started + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            if requests.get(url, timeout=0.5).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{url}: not ready within 30 s")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def measure_once(idle: float) -> dict:
    env = base_env(INTERNAL_KEY=INTERNAL_KEY, LOG_LEVEL="WARNING")
    # What the data plane is given in production: no SECRET_KEY, no database, no cache.
    for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    worker_port, metrics_port = free_port(), free_port()
    controller = StubController(hold=60)
    controller.start()
    state_dir = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    write_credentials(state_dir)
    started = time.monotonic()
    worker = _spawn(["run_worker", "--bind", f"127.0.0.1:{worker_port}"], env)
    try:
        worker_start = _ready_after(f"http://127.0.0.1:{worker_port}/health", worker, started)
        started = time.monotonic()
        agent = _spawn(
            [
                "run_agent",
                "--controller-url",
                controller.url,
                "--worker-url",
                f"http://127.0.0.1:{worker_port}",
                "--state-dir",
                str(state_dir),
                "--metrics-bind",
                f"127.0.0.1:{metrics_port}",
            ],
            env,
        )
        try:
            agent_start = _ready_after(f"http://127.0.0.1:{metrics_port}/metrics", agent, started)
            time.sleep(idle)
            return {
                "worker_startup_s": round(worker_start, 4),
                "agent_startup_s": round(agent_start, 4),
                "worker_rss_kib": rss_kib(worker.pid),
                "agent_rss_kib": rss_kib(agent.pid),
            }
        finally:
            _stop(agent)
    finally:
        _stop(worker)
        controller.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=3.0)
    args = parser.parse_args()
    started = results.start()
    runs = [measure_once(args.idle) for _ in range(args.runs)]
    figures = {"idle_s": args.idle, "runs": runs}
    print(render(figures))
    results.save("daemon_footprint", figures, started)
    return 0


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def _rss_met(kib: float, process: str) -> bool:
    return kib * 1024 <= RSS_TARGET_MB[process] * 1_000_000


def _rows(figures: dict) -> list[tuple[str, str, str, str, str]]:
    """(what, median, max, target, verdict) for each figure; verdicts judge the maximum."""
    runs = figures["runs"]
    rows = []
    for process, label in (
        ("agent", "idle agent, RSS"),
        ("worker", "idle worker, RSS, both processes"),
    ):
        values = [run[f"{process}_rss_kib"] for run in runs]
        rows.append(
            (
                label,
                _mib(statistics.median(values)),
                _mib(max(values)),
                f"≤ {RSS_TARGET_MB[process]} MB",
                "met" if _rss_met(max(values), process) else "**not met**",
            )
        )
    for process in ("agent", "worker"):
        values = [run[f"{process}_startup_s"] for run in runs]
        rows.append(
            (
                f"{process} start-up to ready",
                f"{statistics.median(values):.2f} s",
                f"{max(values):.2f} s",
                f"< {STARTUP_TARGET_S:g} s",
                "met" if max(values) < STARTUP_TARGET_S else "**not met**",
            )
        )
    return rows


def render(figures: dict) -> str:
    lines = [
        f"{len(figures['runs'])} runs, memory after {figures['idle_s']:g} s of idling.",
        "",
        "| | median | max | target | |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(figures)]
    return "\n".join(lines)


def summary(figures: dict) -> list[tuple[str, ...]]:
    runs = len(figures["runs"])
    return [
        (f"{what} (max of {runs})", target, worst, verdict)
        for what, _, worst, target, verdict in _rows(figures)
    ]


if __name__ == "__main__":
    sys.exit(main())
