"""Fan-out: N agents hold a watch on one controller host; one change; how soon has each one heard?

    python bench/watch_fanout.py --agents 1000 10000 [--workers 2]

Starts `run_controller` (PostgreSQL, Redis) on a free port, creates N agents, opens N watches
with real agent tokens from one asyncio client, makes one change through PUT /config/admin and
measures, for every watcher, the time from the PUT being sent until its answer arrived. Also
reports the controller's memory per held watch. Results go to docs/bench/watch_fanout.json
(see bench/results.py).
"""

import argparse
import asyncio
import json
import statistics
import time

import requests

from bench import results
from bench.common import (
    controller_with_agents,
    describe,
    http_get,
    rss_kib,
    setup_many_connections,
    wait_until_all_held,
)


async def watch_all(
    port: int, tokens: list[str], version: int, url: str, headers: dict, pid: int
) -> dict:
    arrived: list[float] = []
    errors: list[str] = []
    semaphore = asyncio.Semaphore(500)  # connection ramp: not all SYNs at once

    async def one(token: str) -> None:
        async with semaphore:
            task = asyncio.ensure_future(
                http_get(
                    "127.0.0.1",
                    port,
                    f"/config/version?version={version}&wait=60",
                    {"Authorization": f"Bearer {token}"},
                )
            )
            await asyncio.sleep(0.002)
        try:
            status, body = await task
        except OSError as exc:
            errors.append(repr(exc))
            return
        if status != 200 or json.loads(body)["version"] != version + 1:
            errors.append(f"{status} {body[:80]!r}")
            return
        arrived.append(time.monotonic())

    tasks = [asyncio.ensure_future(one(t)) for t in tokens]
    # Every watch must be held before the change.
    await wait_until_all_held(len(tokens))
    rss_held = rss_kib(pid)
    sent = time.monotonic()
    response = await asyncio.to_thread(
        requests.put,
        f"{url}/config/admin",
        json={"pooling_interval": 31},
        headers=headers,
        timeout=30,
    )
    put_seconds = time.monotonic() - sent
    assert response.status_code == 200, response.text
    await asyncio.gather(*tasks)
    return {
        "latencies": [t - sent for t in arrived],
        "errors": errors,
        "rss_held": rss_held,
        "put": put_seconds,
    }


def run(count: int, workers: int) -> dict:
    controller, url, tokens, headers, rss_idle = controller_with_agents(count, workers)
    port = int(url.rsplit(":", 1)[1])
    try:
        result = asyncio.run(watch_all(port, tokens, 1, url, headers, controller.popen.pid))
        per_watch = (result["rss_held"] - rss_idle) / count
        print(
            f"N={count} workers={workers}: notified {len(result['latencies'])}/{count}, "
            f"errors {len(result['errors'])}; {describe(result['latencies'])}; "
            f"controller RSS idle {rss_idle / 1024:.0f} MiB, "
            f"holding {result['rss_held'] / 1024:.0f} MiB, {per_watch:.1f} KiB per held watch; "
            f"the PUT took {result['put'] * 1000:.0f} ms"
        )
        if result["errors"]:
            print("  first errors:", result["errors"][:5])
        return {
            "agents": count,
            "workers": workers,
            "latencies_s": result["latencies"],
            "errors": len(result["errors"]),
            "rss_idle_kib": rss_idle,
            "rss_held_kib": result["rss_held"],
            "put_s": result["put"],
        }
    finally:
        controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    setup_many_connections()
    started = results.start()
    runs = [run(count, args.workers) for count in args.agents]
    results.save("watch_fanout", {"runs": runs}, started)


TARGETS_MS = {1000: 250, 10000: 1000}


def render(figures: dict) -> str:
    lines = [
        "| N | notified | errors | min | p50 | p99 | max | controller RSS idle → holding "
        "| per held watch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in figures["runs"]:
        ms = [v * 1000 for v in run["latencies_s"]]
        per_watch = (run["rss_held_kib"] - run["rss_idle_kib"]) / run["agents"]
        p99 = results.p99_or_none(ms)
        lines.append(
            f"| {run['agents']:,} | {len(ms):,} | {run['errors']} | {min(ms):.0f} ms | "
            f"{statistics.median(ms):.0f} ms | "
            + (f"**{p99:.0f} ms**" if p99 is not None else "-")
            + f" | {max(ms):.0f} ms | {run['rss_idle_kib'] / 1024:.0f} → "
            f"{run['rss_held_kib'] / 1024:.0f} MiB | {per_watch:.1f} KiB |"
        )
    return "\n".join(lines)


def summary(figures: dict) -> list[tuple[str, ...]]:
    rows = []
    per_watch = []
    for run in figures["runs"]:
        ms = [v * 1000 for v in run["latencies_s"]]
        p99 = results.p99_or_none(ms)
        target = TARGETS_MS.get(run["agents"])
        complete = len(ms) == run["agents"] and not run["errors"]
        met = complete and p99 is not None and target is not None and p99 <= target
        rows.append(
            (
                f"one change → {run['agents']:,} held watches answered (p99)",
                f"≤ {target:,} ms" if target else "(report)",
                f"{p99:.0f} ms" if p99 is not None else "-",
                ("met" if met else "**not met**") if target else "",
            )
        )
        per_watch.append((run["rss_held_kib"] - run["rss_idle_kib"]) / run["agents"])
    rows.append(
        (
            "controller memory per held watch",
            "(report)",
            f"{min(per_watch):.0f}–{max(per_watch):.0f} KiB",
            "",
        )
    )
    return rows


if __name__ == "__main__":
    main()
