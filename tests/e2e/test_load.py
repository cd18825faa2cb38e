"""Concurrency and load: many admins changing the config at once, and 200 agents watching and
polling while it changes every second."""

import asyncio
import contextlib
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from apps.agents.services import issue_registration_token, register_agent
from tests.e2e.conftest import Admin, wait_for_version
from tests.e2e.reliability import record, tally_outcomes
from tests.support.processes import server_errors, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_concurrent_changes(stack, upstream, admin_user):
    _, redis_url, _ = stack.redis()
    _, url = stack.controller(redis_url, workers=2)
    workers = [stack.worker()[1] for _ in range(3)]
    for n, worker in enumerate(workers):
        stack.agent(url, [worker], f"agent-{n}")
    sessions = [Admin(url) for _ in range(5)]

    def change(n: int) -> requests.Response:
        return sessions[n % len(sessions)].create(upstream.url(f"/text?change={n}"), 30 + n)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=25) as pool:
        answers = list(pool.map(change, range(50)))
    elapsed = time.monotonic() - started

    assert [answer.status_code for answer in answers] == [201] * 50
    versions = sorted(answer.json()["version"] for answer in answers)
    assert versions == list(range(1, 51))
    history = sessions[0].session.get(f"{url}/config/admin/history", timeout=10).json()
    assert history["count"] == 50
    assert sorted(entry["version"] for entry in history["results"]) == list(range(1, 51))
    converged = wait_for_version(workers, 50, timeout=30)

    def applied() -> bool:
        agents = sessions[0].session.get(f"{url}/agents", timeout=10).json()
        agents = agents["results"] if isinstance(agents, dict) else agents
        return len(agents) == 3 and all(agent["applied_version"] == 50 for agent in agents)

    wait_until(applied, timeout=30, message="every agent reports v50")
    statuses = [answer.status_code for answer in answers]
    record(
        "concurrent-changes",
        "50 concurrent changes got versions 1..50, each exactly once; every agent ended on "
        "v50 and its worker too.",
        recover_s=converged,
        outcomes=tally_outcomes(statuses),
        failed_outcomes=[str(status) for status in set(statuses) if status != 201],
        unexpected_5xx=server_errors(url),
        versions=(range(1, 51), [entry["version"] for entry in history["results"]]),
        changes=len(versions),
        changes_per_s=len(versions) / elapsed,
    )


# Simulated agents --------------------------------------------------------------------------


class SimulatedAgent:
    """One agent over one keep-alive connection: a watcher holds GET /config/version with
    wait, a poller asks every few seconds; both fetch GET /config/agent when the version moved."""

    def __init__(self, port: int, token: str, watcher: bool, tally: dict) -> None:
        self.port = port
        self.token = token
        self.watcher = watcher
        self.tally = tally
        self.known = 0
        self.reader = self.writer = None

    async def request(self, target: str, extra: str = "") -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.writer.write(
                    f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {self.token}\r\n{extra}\r\n".encode()
                )
                status_line = await self.reader.readline()
                status = int(status_line.split()[1])
                length, close = 0, False
                while (line := await self.reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "connection" and "close" in value.lower():
                        close = True
                body = await self.reader.readexactly(length) if length else b""
                if close:
                    self.close()
                self.tally["requests"] += 1
                if status >= 500:
                    self.tally["5xx"] += 1
                return status, body
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    self.tally["errors"] += 1
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def run(self, stop: asyncio.Event) -> None:
        import json

        await asyncio.sleep(random.uniform(0, 2))
        while not stop.is_set():
            try:
                if self.watcher:
                    status, body = await self.request(
                        f"/config/version?version={self.known}&wait=30"
                    )
                else:
                    status, body = await self.request("/config/version")
                if status == 200 and json.loads(body)["version"] != self.known:
                    status, body = await self.request(
                        "/config/agent", f'If-None-Match: "{self.known}"\r\n'
                    )
                    if status == 200:
                        self.known = json.loads(body)["version"]
            except (OSError, ValueError, asyncio.IncompleteReadError):
                await asyncio.sleep(1)
            if not self.watcher:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=3)


def controller_rss_kib(pid: int) -> int:
    """Resident memory of the controller: its master process and the worker processes."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    total = 0
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


LOAD_SECONDS = 30
AGENTS = 200


@pytest.mark.timeout(240)
def test_load(stack, upstream, admin_user):
    _, redis_url, _ = stack.redis()
    controller, url = stack.controller(redis_url, workers=2)
    port = int(url.rsplit(":", 1)[1])
    admin = Admin(url)
    assert admin.create(upstream.url("/text?load=0")).status_code == 201
    tokens = [register_agent(token=issue_registration_token()[0])[1] for _ in range(AGENTS)]
    tally = {"requests": 0, "5xx": 0, "errors": 0}
    agents = [SimulatedAgent(port, token, n % 2 == 0, tally) for n, token in enumerate(tokens)]
    admin_statuses: list[int] = []
    memory: list[int] = []
    final = {"version": 1}

    def change_every_second(stop: threading.Event) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        n = 0
        while time.monotonic() < deadline and not stop.is_set():
            n += 1
            answer = admin.change(config_url=upstream.url(f"/text?load={n}"))
            admin_statuses.append(answer.status_code)
            if answer.status_code == 200:
                final["version"] = answer.json()["version"]
            if n % 5 == 0:
                memory.append(controller_rss_kib(controller.popen.pid))
            stop.wait(1)

    async def scenario() -> float:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(agent.run(stop)) for agent in agents]
        changer_stop = threading.Event()
        try:
            await asyncio.to_thread(change_every_second, changer_stop)
            ended = time.monotonic()
            deadline = ended + 15
            while any(agent.known != final["version"] for agent in agents):
                assert time.monotonic() < deadline, "agents did not converge"
                await asyncio.sleep(0.1)
            return time.monotonic() - ended
        finally:
            changer_stop.set()
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for agent in agents:
                agent.close()

    converged = asyncio.run(scenario())
    assert admin_statuses and set(admin_statuses) == {200}
    assert tally["5xx"] == 0 and tally["errors"] == 0, tally
    assert final["version"] == len(admin_statuses) + 1
    # Memory stays flat: after the warm-up, growth under 15% of what the controller holds.
    baseline, peak = memory[0], max(memory)
    assert peak - baseline < 0.15 * baseline, memory
    record(
        "load",
        f"{AGENTS} agents ({AGENTS // 2} holding watches, {AGENTS // 2} polling every 3 s) "
        f"through {len(admin_statuses)} changes in {LOAD_SECONDS} s: no 5xx, every agent on the "
        f"final version, controller memory flat.",
        recover_s=converged,
        # Every request made: answered below 500, answered 5xx, or no answer at all.
        outcomes={
            "answered": tally["requests"] - tally["5xx"],
            "5xx": tally["5xx"],
            "no answer": tally["errors"],
        },
        failed_outcomes=["5xx", "no answer"],
        unexpected_5xx=max(tally["5xx"], server_errors(url)),
        # Per agent: the final version it was to get, and the one it holds.
        versions=(
            [f"{n}:{final['version']}" for n in range(len(agents))],
            [f"{n}:{agent.known}" for n, agent in enumerate(agents)],
        ),
        agents=AGENTS,
        seconds=LOAD_SECONDS,
        changes=len(admin_statuses),
        controller_rss_start_mib=round(baseline / 1024, 1),
        controller_rss_peak_mib=round(peak / 1024, 1),
    )
