"""Version-check throughput: GET /config/version (agent auth, cached state) against a trivial view.

    python -m bench.version_throughput [--workers 2] [--seconds 10]

Runs `run_controller` on PostgreSQL and Redis and drives it with wrk (Debian's `wrk` package),
64 connections, one after the other in the same run: /healthz (a trivial Django view), then
/config/version, /config/agent, and /config/agent with a matching If-None-Match.
"""

import argparse
import re
import shutil
import subprocess
import time

import requests

from bench.common import make_agents, reset_state, setup_django, start_controller


def wrk(url: str, seconds: int, headers: dict[str, str]) -> tuple[float, str]:
    args = ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # The latency distribution's own lines, not the thread statistics that also show a "%".
    p50 = re.search(r"^\s+50%\s+(\S+)$", out, re.MULTILINE).group(1)
    p99 = re.search(r"^\s+99%\s+(\S+)$", out, re.MULTILINE).group(1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    note = f"p50 {p50}, p99 {p99}" + (f", NON-2xx/3xx: {errors.group(1)}" if errors else "")
    return rps, note


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    setup_django()
    from apps.configs.services import publish_config

    reset_state()
    (token,) = make_agents(1)
    publish_config(config_url="http://127.0.0.1:9/bench", pooling_interval=30)
    controller, url = start_controller(args.workers)
    auth = {"Authorization": f"Bearer {token}"}
    try:
        for path in ("/healthz", "/config/version", "/config/agent"):
            requests.get(url + path, headers=auth, timeout=5)  # warm up
        time.sleep(1)
        cases = [
            ("GET /healthz (trivial Django view)", "/healthz", {}),
            ("GET /config/version", "/config/version", auth),
            ("GET /config/agent", "/config/agent", auth),
            (
                "GET /config/agent, If-None-Match (304)",
                "/config/agent",
                {**auth, "If-None-Match": '"1"'},
            ),
        ]
        results = {}
        for name, path, headers in cases:
            results[name] = wrk(url + path, args.seconds, headers)
        baseline = results[cases[0][0]][0]
        print(f"workers={args.workers}, 64 connections, {args.seconds} s each")
        for name, (rps, note) in results.items():
            print(f"  {name:<42} {rps:>8.0f} req/s  ratio {rps / baseline:.2f}  ({note})")
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
