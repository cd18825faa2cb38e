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

The machine's load average is printed with the figures: other work slows start-up more than it
changes memory.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.common import ROOT, rss_kib
from tests.support.agent import StubController, write_credentials
from tests.support.processes import base_env, free_port, manage

INTERNAL_KEY = "bench-internal-key-0123456789"
TARGETS = {"agent_rss_mib": 35, "worker_rss_mib": 90, "startup_s": 1.0}


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
                "worker_startup_s": worker_start,
                "agent_startup_s": agent_start,
                "worker_rss_mib": rss_kib(worker.pid) / 1024,
                "agent_rss_mib": rss_kib(agent.pid) / 1024,
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
    load_before = os.getloadavg()
    runs = [measure_once(args.idle) for _ in range(args.runs)]
    load_after = os.getloadavg()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.runs} runs")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    for name in ("worker_rss_mib", "agent_rss_mib", "worker_startup_s", "agent_startup_s"):
        values = [run[name] for run in runs]
        target = TARGETS["startup_s" if name.endswith("startup_s") else name]
        worst = max(values)
        print(
            f"{name:17} median {statistics.median(values):7.2f}  max {worst:7.2f}  "
            f"target <= {target}  {'met' if worst <= target else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
