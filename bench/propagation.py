"""End to end: how long from an admin's change until the worker serves it?

    python -m bench.propagation [--changes 50] [--no-watch-changes 4]

Real processes: `run_controller` on PostgreSQL and Redis, one `run_worker`, one `run_agent`.
For each change through PUT /config/admin, the time from the PUT's response until the worker's
GET /config shows the new version. Then the same with `run_agent --no-watch` (plain polling at
the 30 s interval), with fewer changes because each one takes up to a whole interval.
Results go to docs/bench/propagation.json (see bench/results.py).
"""

import argparse
import random
import statistics
import tempfile
import time

import requests

from bench import results
from bench.common import bench_env, describe, reset_state, setup_django, start_controller

INTERNAL_KEY = "bench-internal-key-0123456789abcdef"


def run(changes: int, watch: bool) -> list[float]:
    from apps.agents.services import issue_registration_token
    from apps.configs.actions import publish_config
    from tests.support.processes import Process, manage, start_worker, wait_until

    reset_state()
    publish_config(config_url="http://127.0.0.1:9/bench/0", pooling_interval=30)
    registration, _ = issue_registration_token()
    controller, controller_url = start_controller(2, INTERNAL_KEY=INTERNAL_KEY)
    processes = [controller]
    try:
        worker, worker_url = start_worker(INTERNAL_KEY, LOG_LEVEL="WARNING")
        processes.append(worker)
        env = bench_env(INTERNAL_KEY=INTERNAL_KEY)
        state_dir = tempfile.mkdtemp(prefix="bench-agent-")
        agent_args = [
            "run_agent",
            "--controller-url",
            controller_url,
            "--worker-url",
            worker_url,
            "--registration-token",
            registration,
            "--state-dir",
            state_dir,
        ]
        if not watch:
            agent_args.append("--no-watch")
        processes.append(Process(manage(*agent_args), env, "bench-agent"))
        session = requests.Session()

        def worker_version() -> int | None:
            response = session.get(f"{worker_url}/config", timeout=2)
            return response.json()["version"] if response.ok else None

        wait_until(lambda: worker_version() == 1, timeout=60, message="first config on worker")
        token = session.post(
            f"{controller_url}/login",
            json={"email": "bench@example.com", "password": "Bench-pass-123"},
            timeout=10,
        ).json()["access"]
        headers = {"Authorization": f"Bearer {token}"}
        delays = []
        for change in range(1, changes + 1):
            # Changes come at random moments, as an admin's would, not in step with any timer.
            time.sleep(random.uniform(0.2, 0.6))
            response = session.put(
                f"{controller_url}/config/admin",
                json={"config_url": f"http://127.0.0.1:9/bench/{change}"},
                headers=headers,
                timeout=10,
            )
            applied_at = time.monotonic()
            wanted = response.json()["version"]
            deadline = applied_at + 120
            while worker_version() != wanted:
                if time.monotonic() > deadline:
                    raise AssertionError(f"version {wanted} never reached the worker")
                time.sleep(0.001)
            delays.append(time.monotonic() - applied_at)
        return delays
    finally:
        for process in reversed(processes):
            process.stop()


TARGET_MS = 100


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--no-watch-changes", type=int, default=4)
    args = parser.parse_args()
    setup_django()
    started = results.start()
    watched = run(args.changes, watch=True)
    print(f"watch (default): {describe(watched)}")
    figures = {"watch_s": watched}
    if args.no_watch_changes:
        polled = run(args.no_watch_changes, watch=False)
        print(f"--no-watch, 30 s interval: {describe(polled)}")
        figures["no_watch_s"] = polled
    results.save("propagation", figures, started)


def _time(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


def render(figures: dict) -> str:
    lines = [
        "| agent mode | changes | min | p50 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    for mode, key in (
        ("watch (default)", "watch_s"),
        ("`--no-watch`, 30 s interval", "no_watch_s"),
    ):
        values = figures.get(key)
        if not values:
            continue
        p99 = results.p99_or_none(values)
        lines.append(
            f"| {mode} | {len(values)} | {_time(min(values))} | "
            f"{_time(statistics.median(values))} | {_time(p99) if p99 is not None else '-'} | "
            f"**{_time(max(values))}** |"
        )
    lines += [
        "",
        "p99 is given only for samples of more than 100: below that the nearest rank of 0.99 is "
        "the largest value, so the maximum is reported instead.",
    ]
    return "\n".join(lines)


def summary(figures: dict) -> list[tuple[str, ...]]:
    watched = figures["watch_s"]
    worst = max(watched) * 1000
    rows = [
        (
            f"change → worker serves it, watch (max of {len(watched)})",
            f"≤ {TARGET_MS} ms",
            f"{worst:.0f} ms",
            "met" if worst <= TARGET_MS else "**not met**",
        )
    ]
    if figures.get("no_watch_s"):
        rows.append(
            (
                "change → worker serves it, `--no-watch`, 30 s interval (median)",
                "(for comparison)",
                _time(statistics.median(figures["no_watch_s"])),
                "",
            )
        )
    return rows


if __name__ == "__main__":
    main()
