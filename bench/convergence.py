"""Fleet convergence: N agents watch; one change; how soon does each one hold the new content,
and how soon are all their reports recorded?

    python -m bench.convergence --agents 1000 10000 20000 [--workers 2] [--fetch]

Starts `run_controller` (PostgreSQL, Redis) on a free port and creates N agents with distinct
tokens. One asyncio client behaves like N agents: each holds `GET /config/version?version=1&wait=60`
on a keep-alive connection of its own; when the answer comes, the agent holds the new content if
the answer carries it, and otherwise fetches `GET /config/agent` with `If-None-Match` on the same
connection, as the agent does with a controller of an older release (`--fetch` makes every agent
fetch, which is how agents converged before the answer carried the content). Then it reports
with `POST /agent/heartbeat`, on the same connection again.

Per agent: the time from sending the change's PUT until its watch answered ("told") and until
the content was in hand. For the fleet: the time from the PUT until the database held every
agent's report (applied_version 2), errors, and the controller's memory per held watch.
"""

import argparse
import asyncio
import json
import time

import requests

from bench.common import (
    controller_with_agents,
    describe,
    exchange,
    machine_note,
    rss_kib,
    setup_many_connections,
    wait_until_all_held,
)
from bench.results import percentile

KNOWN = 1
REPORT = json.dumps(
    {
        "applied_version": KNOWN + 1,
        "workers": [{"url": "http://127.0.0.1:8082", "ok": True, "version": 2}],
    }
).encode()


def request(method: str, path: str, token: str, extra: str = "", body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n{extra}"
    )
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


class Fleet:
    def __init__(self, port: int, fetch: bool) -> None:
        self.port = port
        self.fetch = fetch
        self.told: list[float] = []
        self.holding: list[float] = []
        self.answered: list[float] = []
        self.fetched = 0
        self.errors: list[str] = []
        self.semaphore = asyncio.Semaphore(500)  # connection ramp: not all SYNs at once

    async def agent(self, token: str, changed: asyncio.Future) -> None:
        async with self.semaphore:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError as exc:
                self.errors.append(f"connect: {exc!r}")
                return
            watch = request("GET", f"/config/version?version={KNOWN}&wait=60", token)
            answer = asyncio.ensure_future(exchange(reader, writer, watch))
            await asyncio.sleep(0.002)
        stage = "watch"
        try:
            status, body = await answer
            state = json.loads(body)
            while status == 200 and state.get("version") == KNOWN:
                # The wait ran out before the change (opening thousands of watches on a busy
                # machine can take longer than a minute): watch again, as an agent does.
                status, body = await exchange(reader, writer, watch)
                state = json.loads(body)
            told = time.monotonic()
            if status != 200 or state.get("version") != KNOWN + 1:
                self.errors.append(f"watch: {status} {body[:80]!r}")
                return
            if self.fetch or not state.get("uuid"):
                stage = "fetch"
                self.fetched += 1
                status, body = await exchange(
                    reader,
                    writer,
                    request("GET", "/config/agent", token, f'If-None-Match: "{KNOWN}"\r\n'),
                )
                if status != 200 or json.loads(body).get("version") != KNOWN + 1:
                    self.errors.append(f"fetch: {status} {body[:80]!r}")
                    return
            holding = time.monotonic()
            stage = "heartbeat"
            status, body = await exchange(
                reader, writer, request("POST", "/agent/heartbeat", token, body=REPORT)
            )
            if status != 204:
                self.errors.append(f"heartbeat: {status} {body[:80]!r}")
                return
            sent = await changed
            self.told.append(told - sent)
            self.holding.append(holding - sent)
            self.answered.append(time.monotonic() - sent)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.errors.append(f"{stage}: {exc!r}")
        finally:
            writer.close()


async def all_reported(count: int, sent: float, timeout: float = 60) -> float | None:
    """Seconds from the change until the database held every agent's report."""
    from apps.agents.models import Agent

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = await asyncio.to_thread(
            lambda: Agent.objects.filter(applied_version=KNOWN + 1).count()
        )
        if done >= count:
            return time.monotonic() - sent
        await asyncio.sleep(0.05)
    return None


async def converge(port: int, tokens: list[str], url: str, headers: dict, pid: int, fetch: bool):
    fleet = Fleet(port, fetch)
    changed = asyncio.get_running_loop().create_future()
    tasks = [asyncio.ensure_future(fleet.agent(token, changed)) for token in tokens]
    await wait_until_all_held(len(tokens))
    rss_held = rss_kib(pid)
    sent = time.monotonic()
    changed.set_result(sent)
    response = await asyncio.to_thread(
        requests.put,
        f"{url}/config/admin",
        json={"config_url": "http://127.0.0.1:9/bench?v2"},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    recorded = await all_reported(len(tokens), sent)
    await asyncio.gather(*tasks)
    return fleet, rss_held, recorded


def run(count: int, workers: int, fetch: bool) -> dict:
    controller, url, tokens, headers, rss_idle = controller_with_agents(count, workers)
    port = int(url.rsplit(":", 1)[1])
    try:
        note = machine_note()
        fleet, rss_held, recorded = asyncio.run(
            converge(port, tokens, url, headers, controller.popen.pid, fetch)
        )
    finally:
        controller.stop()
    ms = [v * 1000 for v in fleet.holding] or [float("nan")]
    result = {
        "agents": count,
        "workers": workers,
        "mode": "fetch after the answer" if fetch else "content in the answer",
        "converged": len(fleet.holding),
        "errors": len(fleet.errors),
        "fetched": fleet.fetched,
        "told_p99_ms": round(percentile([v * 1000 for v in fleet.told] or [0], 0.99), 1),
        "holding_p50_ms": round(percentile(ms, 0.5), 1),
        "holding_p99_ms": round(percentile(ms, 0.99), 1),
        "holding_max_ms": round(max(ms), 1),
        "heartbeats_answered_max_ms": round(max(fleet.answered or [0]) * 1000, 1),
        "all_reports_recorded_s": None if recorded is None else round(recorded, 2),
        "rss_idle_mib": round(rss_idle / 1024),
        "rss_holding_mib": round(rss_held / 1024),
        "kib_per_held_watch": round((rss_held - rss_idle) / count, 1),
        **note,
    }
    print(
        f"N={count} ({result['mode']}): holding {len(fleet.holding)}/{count}, errors "
        f"{len(fleet.errors)}, fetched {fleet.fetched}; told: {describe(fleet.told or [0])}; "
        f"holding: {describe(fleet.holding or [0])}; heartbeats answered: "
        f"{describe(fleet.answered or [0])}; all reports recorded "
        f"{result['all_reports_recorded_s']} s after the change; RSS {result['rss_idle_mib']} → "
        f"{result['rss_holding_mib']} MiB, {result['kib_per_held_watch']} KiB per held watch; "
        f"load average {note['load_average']}"
    )
    if fleet.errors:
        print("  first errors:", fleet.errors[:5])
    print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 10000, 20000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--fetch", action="store_true", help="every agent fetches GET /config/agent after waking"
    )
    args = parser.parse_args()
    setup_many_connections()
    for count in args.agents:
        run(count, args.workers, args.fetch)


if __name__ == "__main__":
    main()
