"""Fan-out: N agents hold a watch on one controller host; one change; how soon has each one heard?

    python bench/watch_fanout.py --agents 1000 10000 [--workers 2] [--wave]

Starts `run_controller` (PostgreSQL, Redis) on a free port, creates N agents, opens N watches
with real agent tokens from one asyncio client, makes one change through PUT /config/admin and
measures, for every watcher, the time from the PUT being sent until its answer arrived. Also
reports the controller's memory per held watch.

With --wave the change is a rollout's wave instead: version 2 is rolling out with waves [50, 100]
(half the agents have it), the other half hold their watch on version 1, and the measured
change is `POST /config/admin/rollout/promote`, which gives it to them. Each held watch is then
answered its own target, decided from the rollout's cutoff without a query.
"""

import argparse
import asyncio
import json
import resource
import time

import requests

from bench.common import (
    http_get,
    make_agents,
    reset_state,
    rss_kib,
    setup_django,
    start_controller,
    summary,
)


async def watch_all(
    port: int, tokens: list[str], version: int, url: str, headers: dict, pid: int, change
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
    # Every watch must be held before the change: an agent's last_seen is written when its
    # watch is authenticated, just before the request starts to wait.
    from apps.agents.models import Agent

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        held = await asyncio.to_thread(
            lambda: Agent.objects.filter(last_seen__isnull=False).count()
        )
        if held >= len(tokens):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1)
    rss_held = rss_kib(pid)
    sent = time.monotonic()
    response = await asyncio.to_thread(change)
    put_seconds = time.monotonic() - sent
    assert response.status_code == 200, response.text
    await asyncio.gather(*tasks)
    return {
        "latencies": [t - sent for t in arrived],
        "errors": errors,
        "rss_held": rss_held,
        "put": put_seconds,
    }


def run(count: int, workers: int, wave: bool = False) -> None:
    reset_state()
    tokens = make_agents(count)
    from apps.configs.services import publish_config

    publish_config(config_url="http://127.0.0.1:9/bench", pooling_interval=30)
    if wave:
        tokens = start_half_rollout(tokens)
    controller, url = start_controller(workers)
    port = int(url.rsplit(":", 1)[1])
    try:
        headers = {
            "Authorization": "Bearer "
            + requests.post(
                f"{url}/login",
                json={"email": "bench@example.com", "password": "Bench-pass-123"},
                timeout=10,
            ).json()["access"]
        }
        # Warm the PUT path (a no-op change: same content, no new version) so that the
        # measured change does not pay for first-request imports and connections.
        for _ in range(3):
            requests.put(
                f"{url}/config/admin", json={"pooling_interval": 30}, headers=headers, timeout=10
            )
        time.sleep(1)
        rss_idle = rss_kib(controller.popen.pid)
        if wave:

            def change():
                return requests.post(
                    f"{url}/config/admin/rollout/promote", headers=headers, timeout=30
                )
        else:

            def change():
                return requests.put(
                    f"{url}/config/admin",
                    json={"pooling_interval": 31},
                    headers=headers,
                    timeout=30,
                )

        result = asyncio.run(watch_all(port, tokens, 1, url, headers, controller.popen.pid, change))
        if not result["latencies"]:
            print(f"N={count}: no watch was answered; first errors: {result['errors'][:5]}")
            return
        per_watch = (result["rss_held"] - rss_idle) / len(tokens)
        print(
            f"{'wave ' if wave else ''}N={count} workers={workers}: notified "
            f"{len(result['latencies'])}/{len(tokens)}, "
            f"errors {len(result['errors'])}; {summary(result['latencies'])}; "
            f"controller RSS idle {rss_idle / 1024:.0f} MiB, "
            f"holding {result['rss_held'] / 1024:.0f} MiB, {per_watch:.1f} KiB per held watch; "
            f"the PUT took {result['put'] * 1000:.0f} ms"
        )
        if result["errors"]:
            print("  first errors:", result["errors"][:5])
    finally:
        controller.stop()


def start_half_rollout(tokens: list[str]) -> list[str]:
    """Version 2 rolling out to the first wave (50%); the tokens of the agents still on 1."""
    from apps.agents.models import Agent
    from apps.agents.tokens import hash_token
    from apps.configs.services import get_current_state, publish_config
    from apps.rollouts.targets import target_of

    publish_config(
        config_url="http://127.0.0.1:9/bench2",
        pooling_interval=30,
        rollout={"waves": [50, 100], "bake_seconds": 86400},
    )
    state = get_current_state()
    ids = dict(Agent.objects.values_list("token_hash", "id"))
    return [t for t in tokens if target_of(state, ids[hash_token(t)], {})["version"] == 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--wave", action="store_true", help="Measure a rollout wave's start, not a publish."
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    setup_django()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    for count in args.agents:
        run(count, args.workers, args.wave)


if __name__ == "__main__":
    main()
