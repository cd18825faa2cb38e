"""Heartbeats at fleet scale: how many a second are recorded, and what a steady fleet costs.

    python -m bench.heartbeats [--agents 10000] [--workers 2] [--seconds 10] [--interval 10]

Starts `run_controller` (PostgreSQL, Redis) on a free port with N agents (distinct tokens), then:

1. throughput: wrk (Debian's package), 2 threads, 64 connections, POST /agent/heartbeat with
   the N tokens in turn (each wrk thread starts at a different place in the list); requests/s
   answered, and heartbeats/s recorded (the controller's controller_heartbeats_recorded_total,
   read once the last batch is written);
2. steady load: every agent reports once per `--interval` seconds, spread evenly, from one
   asyncio client over 100 keep-alive connections; the controller's CPU time (all its
   processes, from /proc) as a share of the machine's cores.

The controller's CPU seconds per 10,000 heartbeats (from the throughput run) depend far less on
what else the machine is doing than the rates do. Results go to docs/bench/heartbeats.json (see
bench/results.py).
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from bench import results
from bench.common import controller_with_agents, cpu_seconds, setup_django

REPORT = json.dumps(
    {"applied_version": 1, "workers": [{"url": "http://127.0.0.1:8082", "ok": True, "version": 1}]}
)
WRK_SCRIPT = """
local tokens = {}
for line in io.lines("%(tokens)s") do tokens[#tokens + 1] = line end
local started = 0
function setup(thread)
  thread:set("offset", started * math.floor(#tokens / 2))
  started = started + 1
end
function init(args) i = offset end
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
function request()
  i = i + 1
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. tokens[(i %% #tokens) + 1]})
end
"""


def recorded(url: str) -> int:
    text = requests.get(f"{url}/metrics", timeout=10).text
    match = re.search(r"^controller_heartbeats_recorded_total (\S+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def throughput(url: str, tokens: list[str], seconds: int, pid: int) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        token_file = Path(directory) / "tokens"
        token_file.write_text("\n".join(tokens) + "\n")
        script = Path(directory) / "heartbeat.lua"
        script.write_text(WRK_SCRIPT % {"tokens": token_file, "body": REPORT})
        before, cpu_before = recorded(url), cpu_seconds(pid)
        out = subprocess.run(
            ["wrk", "-t2", "-c64", f"-d{seconds}s", "-s", str(script), f"{url}/agent/heartbeat"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cpu = cpu_seconds(pid) - cpu_before
    time.sleep(1)  # the last batch
    written = recorded(url) - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_per_s": round(rps),
        "requests": total,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "recorded": written,
        "recorded_per_s": round(written / seconds),
        "controller_cpu_ms_per_heartbeat": round(cpu / max(total, 1) * 1000, 3),
    }


async def steady(port: int, tokens: list[str], interval: float, seconds: float, pid: int) -> dict:
    """Every agent once per `interval`, spread evenly over 100 keep-alive connections."""
    connections = 100
    rate = len(tokens) / interval
    gap = connections / rate  # seconds between two reports on one connection
    answered, errors = 0, 0
    start = time.monotonic()

    async def connection(number: int) -> None:
        nonlocal answered, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = 0
        try:
            while True:
                due = start + number * gap / connections + sent * gap
                if due > start + seconds:
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                token = tokens[(number + sent * connections) % len(tokens)]
                writer.write(
                    (
                        f"POST /agent/heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(REPORT)}\r\n\r\n{REPORT}"
                    ).encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                if b" 204 " in head.split(b"\r\n", 1)[0]:
                    answered += 1
                else:
                    errors += 1
                sent += 1
        finally:
            writer.close()

    cpu_before = cpu_seconds(pid)
    await asyncio.gather(*(connection(n) for n in range(connections)))
    wall = time.monotonic() - start
    cpu = cpu_seconds(pid) - cpu_before
    return {
        "agents": len(tokens),
        "interval_s": interval,
        "heartbeats_per_s": round(answered / wall),
        "errors": errors,
        "controller_cpu_share_of_machine": round(cpu / wall / os.cpu_count(), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--interval", type=float, default=10.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    setup_django()
    started = results.start()
    controller, url, tokens, _, _ = controller_with_agents(args.agents, args.workers)
    pid = controller.popen.pid
    try:
        result = {
            "agents": args.agents,
            "workers": args.workers,
            "seconds": args.seconds,
            "throughput": throughput(url, tokens, args.seconds, pid),
        }
        time.sleep(2)
        port = int(url.rsplit(":", 1)[1])
        result["steady"] = asyncio.run(steady(port, tokens, args.interval, args.seconds * 2, pid))
    finally:
        controller.stop()
    print(json.dumps(result, indent=2))
    results.save("heartbeats", result, started)


# Rendering (docs/PERFORMANCE.md) ---------------------------------------------------------------

RECORDED_PER_S = 5000
STEADY_CPU_SHARE = 0.25


def render(figures: dict) -> str:
    rate, steady_load = figures["throughput"], figures["steady"]
    cpu_ms = rate["controller_cpu_ms_per_heartbeat"]
    return "\n".join(
        [
            f"{figures['agents']:,} agents (distinct tokens), controller with "
            f"{figures['workers']} processes.",
            "",
            "| measurement | result |",
            "|---|---|",
            f"| wrk, 64 connections, {figures['seconds']} s: requests/s answered "
            f"| {rate['requests_per_s']:,} ({rate['requests']:,} requests, "
            f"{rate['non_2xx']} non-2xx) |",
            f"| heartbeats recorded/s (`controller_heartbeats_recorded_total`) "
            f"| **{rate['recorded_per_s']:,}** ({rate['recorded']:,} recorded) |",
            f"| controller CPU per heartbeat (both processes) | {cpu_ms:.3f} ms, "
            f"**{cpu_ms * 10:.2f} CPU-s per 10,000** |",
            f"| steady: {steady_load['agents']:,} agents at a {steady_load['interval_s']:g} s "
            f"interval, controller CPU share of the machine "
            f"| **{steady_load['controller_cpu_share_of_machine'] * 100:.1f}%** "
            f"({steady_load['heartbeats_per_s']:,} reports/s answered, "
            f"{steady_load['errors']} errors) |",
        ]
    )


def summary(figures: dict) -> list[tuple[str, ...]]:
    rate, steady_load = figures["throughput"], figures["steady"]
    share = steady_load["controller_cpu_share_of_machine"]
    return [
        (
            "heartbeats recorded per second, distinct tokens",
            f"≥ {RECORDED_PER_S:,}",
            f"{rate['recorded_per_s']:,}",
            "met"
            if rate["recorded_per_s"] >= RECORDED_PER_S and not rate["non_2xx"]
            else "**not met**",
        ),
        (
            f"steady {steady_load['agents']:,} agents at {steady_load['interval_s']:g} s: "
            "controller CPU",
            f"≤ {STEADY_CPU_SHARE:.0%}",
            f"{share * 100:.1f}%",
            "met" if share <= STEADY_CPU_SHARE and not steady_load["errors"] else "**not met**",
        ),
        (
            "controller CPU per 10,000 heartbeats",
            "(report)",
            f"{rate['controller_cpu_ms_per_heartbeat'] * 10:.2f} s",
            "",
        ),
    ]


if __name__ == "__main__":
    main()
