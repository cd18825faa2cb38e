"""Fan-out: N agents hold a watch on one controller host; one change; how soon has each one heard?

    python bench/watch_fanout.py --agents 1000 10000 [--workers 2]

Starts `run_controller` (PostgreSQL, Redis) on a free port, creates N agents, opens N watches
with real agent tokens from one asyncio client, makes one change through PUT /config/admin and
measures, for every watcher, the time from the PUT being sent until its answer arrived. Also
reports the controller's memory per held watch.
"""

import argparse
import asyncio
import json
import time

import requests

from bench.common import (
    controller_with_agents,
    http_get,
    rss_kib,
    setup_many_connections,
    summary,
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


def run(count: int, workers: int) -> None:
    controller, url, tokens, headers, rss_idle = controller_with_agents(count, workers)
    port = int(url.rsplit(":", 1)[1])
    try:
        result = asyncio.run(watch_all(port, tokens, 1, url, headers, controller.popen.pid))
        per_watch = (result["rss_held"] - rss_idle) / count
        print(
            f"N={count} workers={workers}: notified {len(result['latencies'])}/{count}, "
            f"errors {len(result['errors'])}; {summary(result['latencies'])}; "
            f"controller RSS idle {rss_idle / 1024:.0f} MiB, "
            f"holding {result['rss_held'] / 1024:.0f} MiB, {per_watch:.1f} KiB per held watch; "
            f"the PUT took {result['put'] * 1000:.0f} ms"
        )
        if result["errors"]:
            print("  first errors:", result["errors"][:5])
    finally:
        controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    setup_many_connections()
    for count in args.agents:
        run(count, args.workers)


if __name__ == "__main__":
    main()
