"""End to end: how long from an admin's change until the worker serves it?

    python -m bench.propagation [--changes 200] [--no-watch-changes 4]

Real processes: `run_controller` on PostgreSQL and Redis, one `run_worker`, one `run_agent`.
For each change through PUT /config/admin, three moments: the PUT sent, its answer, and the
worker's GET /config (polled every half millisecond on a connection of its own) showing the new
version. So each change gives the admin write's own time (sent → answered), the delay after the
answer (answered → served) and the whole (sent → served). Then the delay after the answer with
`run_agent --no-watch` (plain polling at the 30 s interval), with fewer changes because each one
takes up to a whole interval. The client is http.client on keep-alive connections, so that what
is timed is the servers, not a heavy client. Results go to docs/bench/propagation.json (see
bench/results.py).
"""

import argparse
import http.client
import json
import random
import statistics
import tempfile
import time
from urllib.parse import urlsplit

import requests

from bench import results
from bench.common import bench_env, describe, reset_state, setup_django, start_controller

INTERNAL_KEY = "bench-internal-key-0123456789abcdef"


def connection_to(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)


def call(connection: http.client.HTTPConnection, method: str, path: str, body=None, headers=None):
    """One request on a keep-alive connection: (status, body)."""
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


def run(changes: int, watch: bool) -> list[tuple[float, float, float]]:
    """(sent, answered, served) of each change, on the monotonic clock."""
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
        worker = connection_to(worker_url)

        def worker_version() -> int | None:
            status, body = call(worker, "GET", "/config")
            return json.loads(body)["version"] if status == 200 else None

        wait_until(lambda: worker_version() == 1, timeout=60, message="first config on worker")
        token = requests.post(
            f"{controller_url}/login",
            json={"email": "bench@example.com", "password": "Bench-pass-123"},
            timeout=10,
        ).json()["access"]
        admin = connection_to(controller_url)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        moments = []
        for change in range(1, changes + 1):
            # Changes come at random moments, as an admin's would, not in step with any timer.
            time.sleep(random.uniform(0.2, 0.6))
            body = json.dumps({"config_url": f"http://127.0.0.1:9/bench/{change}"})
            sent = time.monotonic()
            status, answer = call(admin, "PUT", "/config/admin", body, headers)
            answered = time.monotonic()
            if status != 200:
                raise AssertionError(f"PUT answered {status}: {answer[:200]!r}")
            wanted = json.loads(answer)["version"]
            deadline = answered + 120
            while worker_version() != wanted:
                if time.monotonic() > deadline:
                    raise AssertionError(f"version {wanted} never reached the worker")
                time.sleep(0.0005)
            moments.append((sent, answered, time.monotonic()))
        return moments
    finally:
        for process in reversed(processes):
            process.stop()


# Targets, in ms: after the PUT's answer (p99), from the PUT sent (p99), the PUT itself (p50, p99).
AFTER_ANSWER_MS = 5
FROM_SEND_MS = 15
PUT_P50_MS, PUT_P99_MS = 5, 10


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--no-watch-changes", type=int, default=4)
    args = parser.parse_args()
    setup_django()
    started = results.start()
    moments = run(args.changes, watch=True)
    figures = {
        "put_s": [answered - sent for sent, answered, _ in moments],
        "watch_s": [served - answered for _, answered, served in moments],
        "whole_s": [served - sent for sent, _, served in moments],
    }
    print(f"PUT sent -> answered: {describe(figures['put_s'])}")
    print(f"answered -> worker serves (watch): {describe(figures['watch_s'])}")
    print(f"sent -> worker serves (watch): {describe(figures['whole_s'])}")
    if args.no_watch_changes:
        polled = [served - answered for _, answered, served in run(args.no_watch_changes, False)]
        print(f"--no-watch, 30 s interval: {describe(polled)}")
        figures["no_watch_s"] = polled
    results.save("propagation", figures, started)


def _time(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


ROWS = (
    ("watch (default)", "the admin's `PUT` sent → its answer", "put_s"),
    ("watch (default)", "the `PUT`'s answer → the worker serves it", "watch_s"),
    ("watch (default)", "the `PUT` sent → the worker serves it", "whole_s"),
    ("`--no-watch`, 30 s interval", "the `PUT`'s answer → the worker serves it", "no_watch_s"),
)


def render(figures: dict) -> str:
    lines = [
        "| agent mode | from → to | changes | min | p50 | p99 | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, span, key in ROWS:
        values = figures.get(key)
        if not values:
            continue
        p99 = results.p99_or_none(values)
        lines.append(
            f"| {mode} | {span} | {len(values)} | {_time(min(values))} | "
            f"{_time(statistics.median(values))} | {_time(p99) if p99 is not None else '-'} | "
            f"**{_time(max(values))}** |"
        )
    lines += [
        "",
        "p99 is given only for samples of more than 100: below that the nearest rank of 0.99 is "
        "the largest value, so the maximum is reported instead.",
    ]
    return "\n".join(lines)


def _p99_ms(values: list[float]) -> tuple[str, float]:
    """("p99", value) of a sample, or ("max", value) when it is too small for a p99."""
    p99 = results.p99_or_none(values)
    return ("p99", p99 * 1000) if p99 is not None else ("max", max(values) * 1000)


def _met(met: bool) -> str:
    return "met" if met else "**not met**"


def summary(figures: dict) -> list[tuple[str, ...]]:
    rows = []
    for key, span, target in (
        ("watch_s", "from the `PUT`'s answer", AFTER_ANSWER_MS),
        ("whole_s", "from the `PUT` sent", FROM_SEND_MS),
    ):
        values = figures.get(key)
        if values:
            rank, worst = _p99_ms(values)
            rows.append(
                (
                    f"change → worker serves it, watch, {span} ({rank} of {len(values)})",
                    f"≤ {target} ms",
                    f"{worst:.1f} ms",
                    _met(worst <= target),
                )
            )
    if figures.get("put_s"):
        put = figures["put_s"]
        p50 = statistics.median(put) * 1000
        rank, worst = _p99_ms(put)
        rows.append(
            (
                f"a change's `PUT /config/admin` (p50 / {rank} of {len(put)})",
                f"≤ {PUT_P50_MS} ms / ≤ {PUT_P99_MS} ms",
                f"{p50:.1f} ms / {worst:.1f} ms",
                _met(p50 <= PUT_P50_MS and worst <= PUT_P99_MS),
            )
        )
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
