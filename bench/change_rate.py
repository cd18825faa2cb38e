"""How many config changes a second do the controller and its database take?

    python -m bench.change_rate [--clients 1 4 16] [--seconds 10] [--workers 2]

Real processes: `run_controller` on PostgreSQL and Redis. Each client is an admin with its own
JWT and keep-alive connection, sending PUT /config/admin with a new config_url as fast as the
answers come back. Every change is a new version: a row lock on the current version, an insert
of the next one and an audit row in one transaction, then the cached state refreshed and a
Redis publish after the commit. Reports changes/s and the PUT's latency; the results go to
docs/bench/change_rate.json (see bench/results.py).
"""

import argparse
import os
import statistics
import threading
import time

import requests

from bench import results
from bench.common import describe, reset_state, setup_django, start_controller


def run(clients: int, seconds: float, workers: int) -> tuple[float, list[float], int]:
    from apps.configs.actions import publish_config

    reset_state()
    publish_config(config_url="http://127.0.0.1:9/bench/0", pooling_interval=30)
    controller, url = start_controller(workers)
    try:
        sessions = []
        for _ in range(clients):
            session = requests.Session()
            token = session.post(
                f"{url}/login",
                json={"email": "bench@example.com", "password": "Bench-pass-123"},
                timeout=30,
            ).json()["access"]
            session.headers["Authorization"] = f"Bearer {token}"
            sessions.append(session)
        latencies: list[float] = []
        errors = 0
        lock = threading.Lock()
        deadline = time.monotonic() + seconds

        def client(n: int) -> None:
            nonlocal errors
            change = 0
            while time.monotonic() < deadline:
                change += 1
                started = time.perf_counter()
                answer = sessions[n].put(
                    f"{url}/config/admin",
                    json={"config_url": f"http://127.0.0.1:9/bench/{n}/{change}"},
                    timeout=30,
                )
                elapsed = time.perf_counter() - started
                with lock:
                    if answer.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors += 1

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return len(latencies) / (time.monotonic() - started), latencies, errors
    finally:
        controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    setup_django()
    started = results.start()
    runs = []
    for clients in args.clients:
        rate, latencies, errors = run(clients, args.seconds, args.workers)
        print(
            f"{clients} clients: {rate:.1f} changes/s, errors {errors}, PUT latency "
            f"{describe(latencies)}; load average {os.getloadavg()[0]:.2f}"
        )
        runs.append(
            {
                "clients": clients,
                "changes_per_second": rate,
                "errors": errors,
                "latencies_s": latencies,
                "load_after": round(os.getloadavg()[0], 2),
            }
        )
    results.save(
        "change_rate", {"seconds": args.seconds, "workers": args.workers, "runs": runs}, started
    )


def render(figures: dict) -> str:
    lines = [
        f"Each row: {figures['seconds']:g} s of changes, controller with {figures['workers']} "
        "processes.",
        "",
        "| admins at once | changes/s | errors | PUT p50 | PUT p99 | PUT max "
        "| load average after |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in figures["runs"]:
        ms = [value * 1000 for value in run["latencies_s"]]
        p99 = results.p99_or_none(ms)
        lines.append(
            f"| {run['clients']} | {run['changes_per_second']:.1f} | {run['errors']} | "
            f"{statistics.median(ms):.1f} ms | "
            + (f"{p99:.1f} ms" if p99 is not None else "-")
            + f" | {max(ms):.1f} ms | {run['load_after']:.2f} |"
        )
    return "\n".join(lines)


def summary(figures: dict) -> list[tuple[str, ...]]:
    rates = [run["changes_per_second"] for run in figures["runs"]]
    return [
        (
            "config changes a second, controller and database (any number of admins)",
            "(report)",
            f"{min(rates):.0f}–{max(rates):.0f}",
            "",
        )
    ]


if __name__ == "__main__":
    main()
