"""Version-check throughput: GET /config/version (agent auth, cached state) against a trivial view.

    python -m bench.version_throughput [--workers 2] [--seconds 10]

Runs `run_controller` on PostgreSQL and Redis and drives it with wrk (Debian's `wrk` package),
64 connections, one after the other in the same run: /healthz (a trivial Django view), then
/config/version, /config/agent, and /config/agent with a matching If-None-Match. Results go
to docs/bench/version_throughput.json (see bench/results.py).
"""

import argparse
import re
import shutil
import subprocess
import time

import requests

from bench import results
from bench.common import make_agents, reset_state, setup_django, start_controller


def wrk(url: str, seconds: int, headers: dict[str, str]) -> dict:
    args = ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # The latency distribution's own lines, not the thread statistics that also show a "%".
    p50 = re.search(r"^\s+50%\s+(\S+)$", out, re.MULTILINE).group(1)
    p99 = re.search(r"^\s+99%\s+(\S+)$", out, re.MULTILINE).group(1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_per_second": rps,
        "p50": p50,
        "p99": p99,
        "non_2xx_3xx": int(errors.group(1)) if errors else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    setup_django()
    started = results.start()
    from apps.configs.actions import publish_config

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
        measured = []
        for name, path, headers in cases:
            measured.append({"request": name, **wrk(url + path, args.seconds, headers)})
        baseline = measured[0]["requests_per_second"]
        print(f"workers={args.workers}, 64 connections, {args.seconds} s each")
        for each in measured:
            rps = each["requests_per_second"]
            print(f"  {each['request']:<42} {rps:>8.0f} req/s  ratio {rps / baseline:.2f}")
        figures = {"workers": args.workers, "seconds": args.seconds, "connections": 64}
        results.save("version_throughput", {**figures, "cases": measured}, started)
    finally:
        controller.stop()


TARGET_RATIO = 0.5


def render(figures: dict) -> str:
    baseline = figures["cases"][0]["requests_per_second"]
    lines = [
        f"wrk, 2 threads, {figures['connections']} connections, {figures['seconds']} s per "
        f"request, controller with {figures['workers']} processes.",
        "",
        "| request | req/s | ratio to `/healthz` | p50 | p99 | non-2xx/3xx |",
        "|---|---|---|---|---|---|",
    ]
    for case in figures["cases"]:
        rps = case["requests_per_second"]
        lines.append(
            f"| `{case['request']}` | {rps:,.0f} | {rps / baseline:.2f} | {case['p50']} | "
            f"{case['p99']} | {case['non_2xx_3xx']} |"
        )
    return "\n".join(lines)


def summary(figures: dict) -> list[tuple[str, ...]]:
    cases = {case["request"]: case for case in figures["cases"]}
    version = cases["GET /config/version"]
    ratio = version["requests_per_second"] / figures["cases"][0]["requests_per_second"]
    met = ratio >= TARGET_RATIO and not version["non_2xx_3xx"]
    return [
        (
            f"`GET /config/version` req/s ÷ a trivial view's, {figures['connections']} clients",
            f"≥ {TARGET_RATIO}",
            f"{ratio:.1f}",
            "met" if met else "**not met**",
        )
    ]


if __name__ == "__main__":
    main()
