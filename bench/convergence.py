"""Fleet convergence: N agents watch; one change; how soon does each one hold the new content,
and how soon are all their reports recorded?

    python -m bench.convergence --agents 1000 10000 20000 [--workers 2] [--fetch]
                                [--per-process 10000]
    python -m bench.convergence --agents 50000 --workers 4

Starts `run_controller --workers W` (PostgreSQL, Redis) on a free port and creates N agents with
distinct tokens. Each controller process holds about N / W of the watches (the kernel shares the
connections out, see apps/ops/listeners.py), and may hold only as many as it may open files: a
run that would take one past that is refused, naming the --workers it needs. Client processes
(one per `--per-process` agents, for the same reason) behave like N agents, each connecting from
a loopback address of its own (127.0.0.2, 127.0.0.3, ...), since one source address has only
the ephemeral ports (about 28,000) for its connections to the controller. Each agent holds
`GET /config/version?version=1&wait=60` on a keep-alive connection of its own; when the answer
comes, the agent holds the new content if the answer carries it, and otherwise fetches
`GET /config/agent` with `If-None-Match` on the same connection, as the agent does with a
controller of an older release (`--fetch` makes every agent fetch, which is how agents converged
before the answer carried the content). Then it reports with `POST /agent/heartbeat`, on the same
connection again. Each client process notes its moments on the machine's monotonic clock, which
every process shares, and hands them back when its agents are done.

Per agent: the time from sending the change's PUT until its watch answered ("told") and until
the content was in hand. For the fleet: the time from the PUT until the database held every
agent's report (applied_version 2), errors, and the controller's memory per held watch. Results
go to docs/bench/convergence.json (see bench/results.py).
"""

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

import requests

from bench import results
from bench.common import (
    controller_with_agents,
    cpu_seconds,
    describe,
    exchange,
    rss_kib,
    setup_many_connections,
)

KNOWN = 1
REPORT = json.dumps(
    {
        "applied_version": KNOWN + 1,
        "workers": [{"url": "http://127.0.0.1:8082", "ok": True, "version": 2}],
    }
).encode()
# How long a client process waits for the change and its agents' answers before giving up on
# the agents still waiting (each counted as an error).
CLIENT_TIMEOUT_SECONDS = 600


def request(method: str, path: str, token: str, extra: str = "", body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n{extra}"
    )
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


class Fleet:
    """The agents of one client process; each moment is noted on the monotonic clock."""

    def __init__(self, port: int, fetch: bool, ramp: int = 500, source: str = "127.0.0.1") -> None:
        self.port = port
        self.source = source
        self.fetch = fetch
        self.told: list[float] = []
        self.holding: list[float] = []
        self.answered: list[float] = []
        self.fetched = 0
        self.errors: list[str] = []
        # Connection ramp, shared out among the client processes: not all SYNs at once.
        self.semaphore = asyncio.Semaphore(ramp)

    async def agent(self, token: str) -> None:
        async with self.semaphore:
            for attempt in range(3):
                try:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", self.port, local_addr=(self.source, 0)
                    )
                    break
                except OSError as exc:
                    # Refused or reset while thousands connect at once: again after a
                    # second, as an agent retries with its backoff.
                    if attempt == 2:
                        self.errors.append(f"connect: {exc!r}")
                        return
                    await asyncio.sleep(1)
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
            self.told.append(told)
            self.holding.append(holding)
            self.answered.append(time.monotonic())
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.errors.append(f"{stage}: {exc!r}")
        finally:
            writer.close()

    async def run(self, tokens: list[str]) -> None:
        tasks = [asyncio.ensure_future(self.agent(token)) for token in tokens]
        done, pending = await asyncio.wait(tasks, timeout=CLIENT_TIMEOUT_SECONDS)
        for task in pending:
            task.cancel()
            self.errors.append(f"no answer within {CLIENT_TIMEOUT_SECONDS} s")


def client(port: int, source: str, tokens: list[str], fetch: bool, ramp: int, out) -> None:
    """One client process, connecting from `source`: its agents' moments and errors, sent back
    through `out`."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    fleet = Fleet(port, fetch, ramp, source)
    asyncio.run(fleet.run(tokens))
    out.send(
        {
            "told": fleet.told,
            "holding": fleet.holding,
            "answered": fleet.answered,
            "fetched": fleet.fetched,
            "errors": fleet.errors,
        }
    )
    out.close()


def source_address(index: int) -> str:
    """The loopback address client process `index` connects from: one each, so that none runs
    out of ephemeral ports (Linux answers on all of 127.0.0.0/8)."""
    return f"127.0.0.{2 + index}"


def start_clients(port: int, tokens: list[str], fetch: bool, per_process: int) -> list:
    """Client processes of at most `per_process` agents each; returns (process, pipe) pairs.
    Forked before any event loop runs in this process."""
    context = multiprocessing.get_context("fork")
    processes = -(-len(tokens) // per_process)
    clients = []
    for first in range(0, len(tokens), per_process):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=client,
            args=(
                port,
                source_address(len(clients)),
                tokens[first : first + per_process],
                fetch,
                500 // processes,
                sender,
            ),
            daemon=True,
        )
        process.start()
        sender.close()  # so that a client that dies is an EOFError here, not a hang
        clients.append((process, receiver))
    return clients


def gather_clients(clients: list) -> dict:
    merged = {"told": [], "holding": [], "answered": [], "fetched": 0, "errors": []}
    for process, receiver in clients:
        try:
            part = receiver.recv()
        except EOFError:
            part = {"errors": [f"client process exited with code {process.exitcode}"]}
        process.join(timeout=10)
        for key in ("told", "holding", "answered", "errors"):
            merged[key] += part.get(key, [])
        merged["fetched"] += part.get("fetched", 0)
    return merged


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


async def held_watches(count: int, timeout: float) -> int:
    """How many agents' watches are held (last_seen is written when a watch is authenticated,
    just before it starts to wait), once all are or `timeout` has passed."""
    from apps.agents.models import Agent

    deadline = time.monotonic() + timeout
    while True:
        held = await asyncio.to_thread(
            lambda: Agent.objects.filter(last_seen__isnull=False).count()
        )
        if held >= count or time.monotonic() > deadline:
            await asyncio.sleep(1)
            return held
        await asyncio.sleep(0.5)


async def change(count: int, url: str, headers: dict, pid: int, idle: float) -> tuple:
    """Once every watch is held (or after five minutes, the missing ones then count as not
    converged), and `idle` seconds more: the change. Returns (when the PUT was sent, watches
    held, the connections each controller process holds, the controller's RSS while holding,
    its CPU share of one core while only holding, seconds until every report was recorded)."""
    from tests.support.processes import connections_per_process

    held = await held_watches(count, timeout=300)
    port = int(url.rsplit(":", 1)[1])
    per_process = sorted(connections_per_process(pid, port).values(), reverse=True)
    rss_held = rss_kib(pid)
    # Between changes the agents only watch again when their wait runs out (60 s, with the
    # controller's jitter): what the controller spends meanwhile.
    idle_share = await asyncio.to_thread(idle_share_of, pid, idle) if idle else None
    sent = time.monotonic()
    response = await asyncio.to_thread(
        requests.put,
        f"{url}/config/admin",
        json={"config_url": "http://127.0.0.1:9/bench?v2"},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return sent, held, per_process, rss_held, idle_share, await all_reported(count, sent)


def idle_share_of(pid: int, seconds: float) -> float:
    """The controller's CPU over the next `seconds`, as a share of one core."""
    cpu_before, began = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu_before) / (time.monotonic() - began)


def samples_ms(moments: list[float], sent: float) -> list[float]:
    """Each moment in milliseconds from `sent`, to a tenth, in order: kept in the results so
    that the spreads can be computed again from them."""
    return sorted(round((moment - sent) * 1000, 1) for moment in moments)


def spread_of(ms: list[float]) -> dict | None:
    """min, p50, p99 and max of millisecond samples; p99 only for more than 100 values."""
    if not ms:
        return None
    p99 = results.p99_or_none(ms)
    return {
        "min": round(min(ms), 1),
        "p50": round(results.percentile(ms, 0.5), 1),
        "p99": None if p99 is None else round(p99, 1),
        "max": round(max(ms), 1),
    }


def spread(moments: list[float], sent: float) -> dict | None:
    """min, p50, p99 and max in milliseconds from `sent`; p99 only for more than 100 values."""
    return spread_of(samples_ms(moments, sent))


SPREADS = ("told", "holding", "answered")


def check(figures: dict, *, required: bool) -> list[str]:
    """Where a run's spreads do not follow from its samples; with `required` (results of the
    current format), a run kept without its samples too."""
    return check_spreads(figures, SPREADS, required=required)


def check_spreads(figures: dict, spreads: tuple[str, ...], *, required: bool) -> list[str]:
    problems = []
    for number, run in enumerate(figures["runs"], start=1):
        samples = run.get("samples_ms")
        if samples is None:
            if required:
                problems.append(f"run {number}: spreads kept without their samples")
            continue
        for key in spreads:
            if spread_of(samples.get(key, [])) != run.get(f"{key}_ms"):
                problems.append(f"run {number}: {key}_ms does not follow from its samples")
    return problems


def run(count: int, workers: int, fetch: bool, per_process: int, idle: float) -> dict:
    controller, url, tokens, headers, rss_idle = controller_with_agents(count, workers)
    port = int(url.rsplit(":", 1)[1])
    # The same controller holding nothing, for as long: what the watches add to it.
    bare_share = idle_share_of(controller.popen.pid, idle) if idle else None
    clients = start_clients(port, tokens, fetch, per_process)
    try:
        load = [round(v, 2) for v in os.getloadavg()]
        sent, held, per_process, rss_held, idle_share, recorded = asyncio.run(
            change(count, url, headers, controller.popen.pid, idle)
        )
        fleet = gather_clients(clients)
    finally:
        for process, _ in clients:
            if process.is_alive():
                process.kill()
        controller.stop()
    result = {
        "agents": count,
        "workers": workers,
        "client_processes": len(clients),
        "fetch": fetch,
        "held_before_change": held,
        # Connections each controller process held then: how evenly the kernel shared them out.
        "held_per_process": per_process,
        "converged": len(fleet["holding"]),
        "errors": len(fleet["errors"]),
        "first_errors": fleet["errors"][:5],
        "fetched": fleet["fetched"],
        "told_ms": spread(fleet["told"], sent),
        "holding_ms": spread(fleet["holding"], sent),
        "answered_ms": spread(fleet["answered"], sent),
        "samples_ms": {key: samples_ms(fleet[key], sent) for key in SPREADS},
        "all_reports_recorded_s": None if recorded is None else round(recorded, 2),
        "rss_idle_kib": rss_idle,
        # The controller's CPU, as a share of one core, over `idle_seconds` of only holding.
        "idle_seconds": idle,
        "idle_cpu_share": None if idle_share is None else round(idle_share, 4),
        # ... and before the clients connected, holding nothing.
        "bare_cpu_share": None if bare_share is None else round(bare_share, 4),
        "rss_held_kib": rss_held,
        "load_before_change": load,
    }
    print(
        f"N={count} ({'fetch after the answer' if fetch else 'content in the answer'}, "
        f"{len(clients)} client process(es), connections per controller process {per_process}): "
        f"holding {len(fleet['holding'])}/{count}, errors "
        f"{len(fleet['errors'])}, fetched {fleet['fetched']}; "
        f"told: {describe([t - sent for t in fleet['told']] or [0])}; "
        f"holding: {describe([t - sent for t in fleet['holding']] or [0])}; heartbeats answered: "
        f"{describe([t - sent for t in fleet['answered']] or [0])}; all reports recorded "
        f"{result['all_reports_recorded_s']} s after the change; RSS {rss_idle / 1024:.0f} → "
        f"{rss_held / 1024:.0f} MiB, {per_held_watch(result):.1f} KiB per held watch; "
        f"idle CPU {idle_share}, holding nothing {bare_share}; load average {load}"
    )
    if fleet["errors"]:
        print("  first errors:", fleet["errors"][:5])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 10000, 20000])
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[2],
        help="controller processes: one number for every run, or one per --agents",
    )
    parser.add_argument(
        "--fetch", action="store_true", help="every agent fetches GET /config/agent after waking"
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=0,
        help="seconds to measure the controller's CPU while it only holds the watches, before "
        "the change (60 covers every agent's wait running out once)",
    )
    parser.add_argument(
        "--per-process",
        type=int,
        default=10000,
        help="agents per client process (each holds one connection per agent)",
    )
    args = parser.parse_args()
    refuse_what_cannot_connect(parser, args)
    setup_many_connections()
    started = results.start()
    runs = [
        run(count, workers, args.fetch, args.per_process, args.idle)
        for count, workers in zip(args.agents, args.workers, strict=True)
    ]
    results.save("convergence", {"runs": runs}, started)


# What the machine allows: a controller process holds one socket per watch, a client process
# one per agent, and each is limited to its hard limit on open files (run_controller and the
# clients raise their soft limit to it). A controller process keeps a fifth of it for the rest
# (database, Redis, files) and for an uneven share.
CONTROLLER_FILE_SHARE = 0.8
CLIENT_SPARE_FILES = 100


def refuse_what_cannot_connect(parser: argparse.ArgumentParser, args) -> None:
    """Stop with a message, before anything starts, a run that would run out of open files in
    one of its processes or of ephemeral ports on a client's source address."""
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if files == resource.RLIM_INFINITY:
        files = sys.maxsize
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    if args.per_process > min(files - CLIENT_SPARE_FILES, high - low + 1):
        parser.error(
            f"--per-process {args.per_process}: a client process may open {files} files, and "
            f"has {high - low + 1} ephemeral ports on its source address"
        )
    if len(args.workers) == 1:
        args.workers *= len(args.agents)
    elif len(args.workers) != len(args.agents):
        parser.error("--workers takes one number, or one for each of --agents")
    for count, workers in zip(args.agents, args.workers, strict=True):
        needed = math.ceil(count / (files * CONTROLLER_FILE_SHARE))
        if workers < needed:
            parser.error(
                f"--agents {count} needs --workers {needed} or more: each controller process "
                f"holds about {count // workers} watches and may open {files} files"
            )


# Rendering (docs/PERFORMANCE.md) ---------------------------------------------------------------

HOLDING_MAX_MS = {1000: 150, 10000: 500, 20000: 2500, 50000: 2500}
# What held watches may cost the controller between changes, as a share of one core, judged for
# fleets of up to 10,000 (larger ones are reported).
IDLE_CPU_SHARE = 0.05
IDLE_TARGET_UP_TO = 10000
REPORTS_WITHIN_S = 3
REPORTS_TARGET_UP_TO = 10000
KIB_PER_HELD_WATCH = 16


def per_held_watch(run: dict) -> float:
    held = run.get("held_before_change") or run["agents"]
    return (run["rss_held_kib"] - run["rss_idle_kib"]) / held


def _ms(spread_ms: dict | None, key: str) -> str:
    if spread_ms is None or spread_ms.get(key) is None:
        return "-"
    value = spread_ms[key]
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def render(figures: dict) -> str:
    lines = [
        "| N | answer | controller processes | client processes | held before the change "
        "| holding / errors | told p99 | holding p50 | holding p99 | holding max "
        "| heartbeats answered, max | all reports recorded | controller RSS idle → holding "
        "| per held watch | controller CPU while only holding | load average before the change |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in figures["runs"]:
        recorded = run["all_reports_recorded_s"]
        lines.append(
            f"| {run['agents']:,} | "
            + ("fetch after it (`--fetch`)" if run["fetch"] else "carries the content")
            + f" | {run['workers']} | {run['client_processes']} | "
            f"{run.get('held_before_change', run['agents']):,} | "
            f"{run['converged']:,} / {run['errors']:,} | "
            f"{_ms(run['told_ms'], 'p99')} | {_ms(run['holding_ms'], 'p50')} | "
            f"**{_ms(run['holding_ms'], 'p99')}** | **{_ms(run['holding_ms'], 'max')}** | "
            f"{_ms(run['answered_ms'], 'max')} | "
            + ("not all within 60 s" if recorded is None else f"**{recorded:.2f} s**")
            + f" | {run['rss_idle_kib'] / 1024:.0f} → {run['rss_held_kib'] / 1024:.0f} MiB | "
            f"{per_held_watch(run):.1f} KiB | "
            + _idle(run)
            + " | "
            + ", ".join(f"{v:.1f}" for v in run["load_before_change"])
            + " |"
        )
    lines += [
        "",
        "p99 is given only for samples of more than 100 (a dash otherwise: the maximum is the "
        "figure). Times run from sending the change's PUT.",
    ]
    return "\n".join(lines)


def _idle(run: dict) -> str:
    share = run.get("idle_cpu_share")
    if share is None:
        return "-"
    return (
        f"{share:.1%} of a core over {run['idle_seconds']:.0f} s "
        f"({run['bare_cpu_share']:.1%} holding nothing)"
    )


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def summary(figures: dict) -> list[tuple[str, ...]]:
    rows = []
    content = [run for run in figures["runs"] if not run["fetch"]]
    for run in content:
        n = run["agents"]
        complete = run["converged"] == n and run["errors"] == 0
        holding = run["holding_ms"] or {}
        worst = holding.get("max")
        if n in HOLDING_MAX_MS:
            met = complete and worst is not None and worst <= HOLDING_MAX_MS[n]
            rows.append(
                (
                    f"one change → {n:,} agents holding the new content (max, errors)",
                    f"≤ {HOLDING_MAX_MS[n]:,} ms, 0",
                    f"{_ms(holding, 'max')}, {run['errors']:,}",
                    _verdict(met),
                )
            )
        recorded = run["all_reports_recorded_s"]
        # The target is set for fleets of up to 10,000; larger ones are reported.
        judged = n <= REPORTS_TARGET_UP_TO
        rows.append(
            (
                f"reports of {n:,} agents recorded after a change",
                f"≤ {REPORTS_WITHIN_S} s" if judged else "(report)",
                "not all" if recorded is None else f"{recorded:.2f} s",
                _verdict(recorded is not None and recorded <= REPORTS_WITHIN_S) if judged else "",
            )
        )
        share = run.get("idle_cpu_share")
        if share is not None:
            # The watches' cost: the controller's CPU while holding them, less the same
            # controller's holding nothing (its periodic jobs, its revocation sweeps).
            added = share - run["bare_cpu_share"]
            judged = n <= IDLE_TARGET_UP_TO
            rows.append(
                (
                    f"{n:,} held watches between changes: the controller CPU they add, share of "
                    f"one core ({run['idle_seconds']:.0f} s; in all, and holding nothing)",
                    f"≤ {IDLE_CPU_SHARE:.0%}" if judged else "(report)",
                    f"{added:.1%} ({share:.1%}; {run['bare_cpu_share']:.1%})",
                    _verdict(added <= IDLE_CPU_SHARE) if judged else "",
                )
            )
    # Memory per watch: from the runs of 10,000 and more, where the idle process is a small part.
    large = [run for run in content if run["agents"] >= 10000] or content
    if large:
        worst = max(per_held_watch(run) for run in large)
        rows.append(
            (
                "controller memory per held watch ("
                + ", ".join(f"{run['agents']:,}" for run in large)
                + ")",
                f"≤ {KIB_PER_HELD_WATCH} KiB",
                f"{worst:.1f} KiB"
                if len(large) == 1
                else f"{min(per_held_watch(r) for r in large):.1f}–{worst:.1f} KiB",
                _verdict(worst <= KIB_PER_HELD_WATCH),
            )
        )
    return rows


if __name__ == "__main__":
    main()
