"""Fan-out per scope: many scopes' agents hold watches on one controller; a change in one scope
must reach that scope's agents, and none of the others.

    python -m bench.scope_fanout [--scopes 100] [--per-scope 100] [--big 1000] [--workers 2]

Starts `run_controller` (PostgreSQL, Redis) on a free port with `--scopes` applications of
`--per-scope` agents each and one application of `--big` agents, all in the default environment,
each scope on its own version 1. Every agent holds `GET /config/version?version=1&wait=60` with
its own token (11,000 watches by default). Then one change in each of five small scopes, one
after the other, and one in the big scope, each through
`PUT /apps/{app}/envs/{env}/config/admin`: for each, the time from sending the PUT until each
of its agents' answers arrived, and how many watches of the other scopes were answered by then
(none should be; they are still held one second after the change). Results go to
docs/bench/scope_fanout.json.
"""

import argparse
import asyncio
import json
import statistics
import time

import requests

from bench import results
from bench.common import (
    admin_headers,
    describe,
    http_get,
    reset_state,
    rss_kib,
    setup_many_connections,
    start_controller,
    wait_until_all_held,
)

# After a change, how long the other scopes' watches are watched for an answer they must not get.
QUIET_SECONDS = 1.0
TARGETS_MS = {"small": 50, "big": 150}
# How many small scopes get a change, one after the other.
SMALL_CHANGES = 5


def make_fleet(scopes: int, per_scope: int, big: int) -> dict[str, list[str]]:
    """The applications and their agents, each scope on its version 1: {application: tokens}."""
    from apps.agents.models import Agent
    from apps.configs.actions import publish_config
    from apps.scopes.models import Application
    from apps.scopes.services import create_application, default_scope, get_scope
    from controller_site.tokens import AGENT_PREFIX, hash_token, new_token

    reset_state()
    environment = default_scope().environment.name
    sizes = {f"app-{n:03d}": per_scope for n in range(scopes)} | {"big": big}
    fleet = {}
    for application, size in sizes.items():
        if not Application.objects.filter(name=application).exists():  # kept from a run before
            create_application(application)
        scope = get_scope(application, environment)
        tokens = [new_token(AGENT_PREFIX) for _ in range(size)]
        Agent.objects.bulk_create(
            [
                Agent(name=f"{application}-{i}", token_hash=hash_token(token), scope=scope)
                for i, token in enumerate(tokens)
            ],
            batch_size=2000,
        )
        publish_config(
            scope_id=scope.pk, config_url=f"http://127.0.0.1:9/{application}", pooling_interval=30
        )
        fleet[application] = tokens
    return fleet


class Watches:
    """Every agent's watch, and when each one was answered."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answered: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.tasks: list[asyncio.Task] = []

    def open(self, fleet: dict[str, list[str]]) -> None:
        semaphore = asyncio.Semaphore(500)  # connection ramp: not all SYNs at once
        for application, tokens in fleet.items():
            self.answered[application] = []
            for token in tokens:
                self.tasks.append(asyncio.ensure_future(self.one(application, token, semaphore)))

    async def one(self, application: str, token: str, semaphore: asyncio.Semaphore) -> None:
        async with semaphore:
            task = asyncio.ensure_future(
                http_get(
                    "127.0.0.1",
                    self.port,
                    "/config/version?version=1&wait=60",
                    {"Authorization": f"Bearer {token}"},
                )
            )
            await asyncio.sleep(0.002)
        try:
            status, body = await task
        except OSError as exc:
            self.errors.append(repr(exc))
            return
        if status != 200 or json.loads(body)["version"] != 2:
            self.errors.append(f"{application}: {status} {body[:80]!r}")
            return
        self.answered[application].append(time.monotonic())

    def answered_elsewhere(self, application: str) -> int:
        return sum(len(times) for name, times in self.answered.items() if name != application)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()


async def change(url: str, headers: dict, application: str, environment: str) -> float:
    """PUT a new version in one scope; returns when it was sent."""
    sent = time.monotonic()
    response = await asyncio.to_thread(
        requests.put,
        f"{url}/apps/{application}/envs/{environment}/config/admin",
        json={"pooling_interval": 31},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return sent


async def measure(port: int, url: str, fleet: dict, environment: str, pid: int) -> dict:
    headers = await asyncio.to_thread(admin_headers, url)
    watches = Watches(port)
    watches.open(fleet)
    total = sum(len(tokens) for tokens in fleet.values())
    await wait_until_all_held(total)
    rss_held = rss_kib(pid)
    changes = []
    small = [name for name in fleet if name != "big"]
    # Several small scopes, one after the other: a single change's time varies with what the
    # controller is doing at that moment (a garbage collection over the held watches, say).
    picked = [("small", name) for name in small[:: max(1, len(small) // SMALL_CHANGES)]]
    for kind, application in [*picked[:SMALL_CHANGES], ("big", "big")]:
        before_elsewhere = watches.answered_elsewhere(application)
        sent = await change(url, headers, application, environment)
        deadline = time.monotonic() + 30
        while len(watches.answered[application]) < len(fleet[application]):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(QUIET_SECONDS)
        latencies = [t - sent for t in watches.answered[application]]
        elsewhere = watches.answered_elsewhere(application) - before_elsewhere
        print(
            f"change in {application} ({kind}, {len(fleet[application])} agents, {total} held): "
            f"answered {len(latencies)}/{len(fleet[application])}; {describe(latencies or [0])}; "
            f"other scopes' watches answered within {QUIET_SECONDS:.0f} s: {elsewhere}"
        )
        changes.append(
            {
                "kind": kind,
                "application": application,
                "agents": len(fleet[application]),
                "latencies_s": latencies,
                "answered_elsewhere": elsewhere,
            }
        )
    watches.close()
    return {"changes": changes, "errors": len(watches.errors), "rss_held_kib": rss_held}


def run(scopes: int, per_scope: int, big: int, workers: int) -> dict:
    from apps.scopes.services import default_scope

    fleet = make_fleet(scopes, per_scope, big)
    environment = default_scope().environment.name
    controller, url = start_controller(workers)
    port = int(url.rsplit(":", 1)[1])
    try:
        # As the single-scope fan-out does: the change path warmed up (no-op changes, so no new
        # version) before the idle memory is read, so that its first imports and connections
        # are neither counted as the watches' memory nor paid by the first measured change.
        # Each PUT opens a connection of its own, which the kernel gives to either process:
        # ten leave a process unwarmed once in about five hundred runs.
        headers = admin_headers(url)
        for _ in range(10):
            requests.put(
                f"{url}/apps/big/envs/{environment}/config/admin",
                json={"pooling_interval": 30},
                headers=headers,
                timeout=10,
            )
        time.sleep(1)
        rss_idle = rss_kib(controller.popen.pid)
        measured = asyncio.run(measure(port, url, fleet, environment, controller.popen.pid))
    finally:
        controller.stop()
    held = sum(len(tokens) for tokens in fleet.values())
    return {
        "scopes": scopes + 1,
        "per_scope": per_scope,
        "big": big,
        "held": held,
        "workers": workers,
        "rss_idle_kib": rss_idle,
        **measured,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scopes", type=int, default=100)
    parser.add_argument("--per-scope", type=int, default=100)
    parser.add_argument("--big", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    setup_many_connections()
    started = results.start()
    figures = run(args.scopes, args.per_scope, args.big, args.workers)
    results.save("scope_fanout", figures, started)


# Rendering (docs/PERFORMANCE.md) ---------------------------------------------------------------


def render(figures: dict) -> str:
    lines = [
        "| change in | its agents | watches held | answered | min | p50 | max | other scopes' "
        "watches answered | controller RSS idle → holding | per held watch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    per_watch = (figures["rss_held_kib"] - figures["rss_idle_kib"]) / figures["held"]
    for change in figures["changes"]:
        ms = [v * 1000 for v in change["latencies_s"]] or [0.0]
        lines.append(
            f"| `{change['application']}` | {change['agents']:,} | {figures['held']:,} | "
            f"{len(change['latencies_s']):,} | {min(ms):.0f} ms | {statistics.median(ms):.0f} ms "
            f"| **{max(ms):.0f} ms** | **{change['answered_elsewhere']}** | "
            f"{figures['rss_idle_kib'] / 1024:.0f} → {figures['rss_held_kib'] / 1024:.0f} MiB | "
            f"{per_watch:.1f} KiB |"
        )
    lines.append("")
    lines.append(
        f"{figures['scopes']} scopes on {figures['workers']} controller processes; "
        f"{figures['errors']} errors among all watches."
    )
    return "\n".join(lines)


def summary(figures: dict) -> list[tuple[str, ...]]:
    rows = []
    for kind in ("small", "big"):
        changes = [change for change in figures["changes"] if change["kind"] == kind]
        if not changes:
            continue
        maxima = [max(c["latencies_s"]) * 1000 for c in changes if c["latencies_s"]]
        complete = all(len(c["latencies_s"]) == c["agents"] for c in changes)
        others = sum(c["answered_elsewhere"] for c in changes)
        target = TARGETS_MS[kind]
        worst = max(maxima) if maxima else None
        met = complete and not figures["errors"] and not others and worst is not None
        met = met and worst <= target
        several = f", the worst of {len(changes)} changes" if len(changes) > 1 else ""
        rows.append(
            (
                f"one change in a scope of {changes[0]['agents']:,} agents among "
                f"{figures['held']:,} held → all of its agents (max{several}), none of the others",
                f"≤ {target} ms, 0 others",
                (f"{worst:.0f} ms" if worst is not None else "-") + f", {others} others",
                "met" if met else "**not met**",
            )
        )
    rows.append(
        (
            "controller memory per held watch, across scopes",
            "≤ 16 KiB",
            f"{(figures['rss_held_kib'] - figures['rss_idle_kib']) / figures['held']:.1f} KiB",
            "met"
            if (figures["rss_held_kib"] - figures["rss_idle_kib"]) / figures["held"] <= 16
            else "**not met**",
        )
    )
    return rows


if __name__ == "__main__":
    main()
