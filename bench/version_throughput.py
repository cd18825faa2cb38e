"""Version-check throughput: GET /config/version (agent auth, cached state) against a trivial view.

    python -m bench.version_throughput [--workers 2] [--seconds 10]

Runs `run_controller` on PostgreSQL and Redis and drives it with wrk (Debian's `wrk` package),
64 connections, one after the other in the same run: /healthz (a trivial Django view), then
/config/version, /config/agent, and /config/agent with a matching If-None-Match. Results go
to docs/bench/version_throughput.json (see bench/results.py).
"""

import argparse
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from bench import results
from bench.common import make_agents, reset_state, setup_django, start_controller

# wrk's done() hook: its counters and every (latency in µs, count) of its histogram, which
# holds each response's latency to the microsecond: the samples its percentiles come from.
DUMP = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("COUNTS %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout))
  io.write(string.format("WRK %d %d\\n", latency:percentile(50), latency:percentile(99)))
  for i = 1, #latency do
    local value, count = latency(i)
    io.write(string.format("LATENCY %d %d\\n", value, count))
  end
end
"""


def wrk_percentile(histogram: list[list[int]], percent: float) -> int:
    """wrk's own percentile (stats_percentile): the first latency whose running count reaches
    the rank, C's round() being half away from zero."""
    rank = math.floor(percent / 100 * sum(count for _, count in histogram) + 0.5 + 0.5)
    total = 0
    for value, count in sorted(histogram):
        total += count
        if total >= rank:
            return value
    return 0


def case_figures(counts: dict, histogram: list[list[int]]) -> dict:
    """A case's rate and latency, from wrk's counters and histogram as kept."""
    return {
        "requests_per_second": counts["requests"] / (counts["duration_us"] / 1e6),
        "p50_ms": wrk_percentile(histogram, 50) / 1000,
        "p99_ms": wrk_percentile(histogram, 99) / 1000,
        "non_2xx_3xx": counts["status_errors"],
    }


def wrk(url: str, seconds: int, headers: dict[str, str], script: Path) -> dict:
    args = ["wrk", "-t2", "-c64", f"-d{seconds}s", "-s", str(script)]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    fields = next(line.split()[1:] for line in out.splitlines() if line.startswith("COUNTS "))
    names = ("requests", "duration_us", "connect", "read", "write", "status_errors", "timeout")
    counts = dict(zip(names, map(int, fields), strict=True))
    histogram = [
        [int(value), int(count)]
        for _, value, count in (
            line.split() for line in out.splitlines() if line.startswith("LATENCY ")
        )
    ]
    own = next(line.split()[1:] for line in out.splitlines() if line.startswith("WRK "))
    figures = case_figures(counts, histogram)
    # The recomputation is wrk's rule; if it ever disagrees with wrk, the run says so.
    if [figures["p50_ms"], figures["p99_ms"]] != [int(v) / 1000 for v in own]:
        raise SystemExit(f"wrk's percentiles {own} µs differ from its histogram's: {figures}")
    return {**figures, "counts": counts, "latency_histogram_us": histogram}


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
        with tempfile.TemporaryDirectory() as scratch:
            script = Path(scratch) / "dump.lua"
            script.write_text(DUMP)
            for name, path, headers in cases:
                case = wrk(url + path, args.seconds, headers, script)
                measured.append({"request": name, **case})
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
            f"| `{case['request']}` | {rps:,.0f} | {rps / baseline:.2f} | "
            f"{case['p50_ms']:.2f} ms | {case['p99_ms']:.2f} ms | {case['non_2xx_3xx']} |"
        )
    return "\n".join(lines)


def check(figures: dict, *, required: bool) -> list[str]:
    """Where a case's rate or percentiles do not follow from wrk's counters and histogram; with
    `required` (results of the current format), a case kept without them too."""
    problems = []
    for case in figures["cases"]:
        if "counts" not in case:
            if required:
                problems.append(f"{case['request']}: kept without wrk's counters and histogram")
            continue
        for key, value in case_figures(case["counts"], case["latency_histogram_us"]).items():
            if case.get(key) != value:
                problems.append(f"{case['request']}: {key} does not follow from wrk's counts")
    return problems


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
