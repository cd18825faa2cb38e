"""Fleet convergence, the long poll against the event stream, back to back on the same setup.

    python -m bench.convergence_stream --agents 1000 10000 [--workers 2] [--per-process 5000]

For each N, two runs of bench/convergence.py's setup (`run_controller`, PostgreSQL, Redis, N
agents with distinct tokens, one change once every agent waits), one per mode:

- watch: each agent holds `GET /config/version?version=1&wait=60` on a keep-alive connection;
  when the answer comes it holds the new content, reports with `POST /agent/heartbeat` on the
  same connection and watches again (`version=2&wait=60`), as the agent does: the request every
  agent makes again after every change.
- stream: each agent holds `GET /config/stream`, reads its first event (version 1), and waits
  on the same connection for the next one (version 2, the content in its data); then it reports
  with `POST /agent/heartbeat` on a second keep-alive connection, opened when its stream started
  and used then for one report of the version it holds (the stream occupies the first; an agent
  reporting every 10 s keeps such a connection warm within the controller's 75 s keep-alive,
  while one that never sent a request is closed after CONTROLLER_HEADER_TIMEOUT), and keeps its
  stream: nothing is asked again.

Per agent: from sending the PUT until the content was in hand ("holding") and until its report
was answered. For the fleet: until the database held every report, and the controller's CPU
seconds (user + system of every controller process, from /proc) from just before the PUT until
one second after the last report was recorded, which covers the watches asked again. Also the
controller's memory per waiting agent. Results go to docs/bench/convergence_stream.json.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import time

from bench import results
from bench.common import (
    controller_with_agents,
    cpu_seconds,
    describe,
    exchange,
    rss_kib,
    setup_many_connections,
)
from bench.convergence import (
    CLIENT_TIMEOUT_SECONDS,
    KNOWN,
    REPORT,
    check_spreads,
    held_watches,
    request,
    samples_ms,
    spread,
)

MODES = ("watch", "stream")
SPREADS = ("holding", "answered")
# The report that warms a streaming agent's report connection: the version it already holds.
WARM = json.dumps(
    {
        "applied_version": KNOWN,
        "workers": [{"url": "http://127.0.0.1:8082", "ok": True, "version": KNOWN}],
    }
).encode()
# How long the connections stay open after an agent is done: the watches asked again are then
# held, as they would be, while the controller's CPU is measured.
KEEP_SECONDS = 3


async def open_connection(port: int):
    for attempt in range(3):
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            # Refused or reset while thousands connect at once: again after a second.
            if attempt == 2:
                raise
            await asyncio.sleep(1)


async def next_event(reader, buffer: bytearray) -> tuple[int, dict]:
    """(version, data) of the next `config` event of a chunked event stream; comment lines
    (keep-alives) and `retry` are skipped."""
    while True:
        end = buffer.find(b"\n\n")
        if end >= 0:
            block = bytes(buffer[:end])
            del buffer[: end + 2]
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line[1:])
            if fields.get(b"event") == b"config":
                return int(fields[b"id"]), json.loads(fields[b"data"])
            continue
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        if size == 0:
            raise asyncio.IncompleteReadError(bytes(buffer), None)
        buffer += (await reader.readexactly(size + 2))[:-2]


class Fleet:
    """The agents of one client process; each moment is noted on the monotonic clock."""

    def __init__(self, port: int, mode: str, ramp: int) -> None:
        self.port = port
        self.mode = mode
        self.holding: list[float] = []
        self.answered: list[float] = []
        self.errors: list[str] = []
        self.kept: list = []
        self.semaphore = asyncio.Semaphore(ramp)

    async def agent(self, token: str) -> None:
        async with self.semaphore:
            try:
                reader, writer = await open_connection(self.port)
            except OSError as exc:
                self.errors.append(f"connect: {exc!r}")
                return
            if self.mode == "watch":
                watch = request("GET", f"/config/version?version={KNOWN}&wait=60", token)
                waiting = asyncio.ensure_future(exchange(reader, writer, watch))
            else:
                waiting = asyncio.ensure_future(self.first_event(reader, writer, token))
                try:
                    report = await open_connection(self.port)
                    # Used once now, as an agent reporting every 10 s uses it: a connection
                    # that never sent a request is closed after CONTROLLER_HEADER_TIMEOUT.
                    status, body = await exchange(
                        *report, request("POST", "/agent/heartbeat", token, body=WARM)
                    )
                except (OSError, asyncio.IncompleteReadError) as exc:
                    self.errors.append(f"connect: {exc!r}")
                    return
                self.kept.append(report[1])
                if status != 204:
                    self.errors.append(f"warm heartbeat: {status} {body[:80]!r}")
                    return
            await asyncio.sleep(0.002)
        self.kept.append(writer)
        stage = self.mode
        try:
            if self.mode == "watch":
                status, body = await waiting
                state = json.loads(body)
                while status == 200 and state.get("version") == KNOWN:
                    status, body = await exchange(reader, writer, watch)
                    state = json.loads(body)
                if status != 200 or state.get("version") != KNOWN + 1 or not state.get("uuid"):
                    self.errors.append(f"watch: {status} {body[:80]!r}")
                    return
            else:
                buffer = await waiting
                version, state = await next_event(reader, buffer)
                if version != KNOWN + 1 or not state.get("uuid"):
                    self.errors.append(f"stream: event {version} {state}")
                    return
            holding = time.monotonic()
            stage = "heartbeat"
            beat = request("POST", "/agent/heartbeat", token, body=REPORT)
            if self.mode == "watch":
                status, body = await exchange(reader, writer, beat)
            else:
                try:
                    status, body = await exchange(*report, beat)
                except (OSError, asyncio.IncompleteReadError):
                    # Closed by the controller's keep-alive timeout: a new connection, as the
                    # agent's HTTP session would open.
                    report = await open_connection(self.port)
                    self.kept.append(report[1])
                    status, body = await exchange(*report, beat)
            if status != 204:
                self.errors.append(f"heartbeat: {status} {body[:80]!r}")
                return
            answered = time.monotonic()
            if self.mode == "watch":
                # The agent watches again at once; the answer would come with the next change.
                again = f"/config/version?version={KNOWN + 1}&wait=60"
                writer.write(request("GET", again, token))
                await writer.drain()
            self.holding.append(holding)
            self.answered.append(answered)
        except (OSError, asyncio.IncompleteReadError, ValueError, KeyError) as exc:
            self.errors.append(f"{stage}: {exc!r}")

    async def first_event(self, reader, writer, token: str) -> bytearray:
        writer.write(request("GET", "/config/stream", token))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise ValueError(f"stream answered {status}")
        buffer = bytearray()
        version, _ = await next_event(reader, buffer)
        if version != KNOWN:
            raise ValueError(f"first event {version}")
        return buffer

    async def run(self, tokens: list[str]) -> None:
        tasks = [asyncio.ensure_future(self.agent(token)) for token in tokens]
        done, pending = await asyncio.wait(tasks, timeout=CLIENT_TIMEOUT_SECONDS)
        for task in pending:
            task.cancel()
            self.errors.append(f"no answer within {CLIENT_TIMEOUT_SECONDS} s")
        await asyncio.sleep(KEEP_SECONDS)
        for writer in self.kept:
            writer.close()


def client(port: int, tokens: list[str], mode: str, ramp: int, out) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    fleet = Fleet(port, mode, ramp)
    asyncio.run(fleet.run(tokens))
    out.send({"holding": fleet.holding, "answered": fleet.answered, "errors": fleet.errors})
    out.close()


def start_clients(port: int, tokens: list[str], mode: str, per_process: int) -> list:
    context = multiprocessing.get_context("fork")
    processes = -(-len(tokens) // per_process)
    clients = []
    for first in range(0, len(tokens), per_process):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=client,
            args=(port, tokens[first : first + per_process], mode, 500 // processes, sender),
            daemon=True,
        )
        process.start()
        sender.close()
        clients.append((process, receiver))
    return clients


def gather_clients(clients: list) -> dict:
    merged = {"holding": [], "answered": [], "errors": []}
    for process, receiver in clients:
        try:
            part = receiver.recv()
        except EOFError:
            part = {"errors": [f"client process exited with code {process.exitcode}"]}
        process.join(timeout=10)
        for key in merged:
            merged[key] += part.get(key, [])
    return merged


async def change(count: int, url: str, headers: dict, pid: int) -> tuple:
    """Once every agent waits: the change. Returns (when the PUT was sent, agents waiting, RSS
    while waiting, seconds until every report was recorded, controller CPU seconds)."""
    import requests

    from bench.convergence import all_reported

    held = await held_watches(count, timeout=300)
    rss_held = rss_kib(pid)
    cpu_before = cpu_seconds(pid)
    sent = time.monotonic()
    response = await asyncio.to_thread(
        requests.put,
        f"{url}/config/admin",
        json={"config_url": "http://127.0.0.1:9/bench?v2"},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    recorded = await all_reported(count, sent)
    await asyncio.sleep(1)
    return sent, held, rss_held, recorded, cpu_seconds(pid) - cpu_before


def run(count: int, mode: str, workers: int, per_process: int) -> dict:
    controller, url, tokens, headers, rss_idle = controller_with_agents(count, workers)
    port = int(url.rsplit(":", 1)[1])
    clients = start_clients(port, tokens, mode, per_process)
    try:
        load = [round(v, 2) for v in os.getloadavg()]
        sent, held, rss_held, recorded, cpu = asyncio.run(
            change(count, url, headers, controller.popen.pid)
        )
        fleet = gather_clients(clients)
    finally:
        for process, _ in clients:
            if process.is_alive():
                process.kill()
        controller.stop()
    result = {
        "agents": count,
        "mode": mode,
        "workers": workers,
        "client_processes": len(clients),
        "held_before_change": held,
        "converged": len(fleet["holding"]),
        "errors": len(fleet["errors"]),
        "first_errors": fleet["errors"][:5],
        "holding_ms": spread(fleet["holding"], sent),
        "answered_ms": spread(fleet["answered"], sent),
        "samples_ms": {key: samples_ms(fleet[key], sent) for key in SPREADS},
        "all_reports_recorded_s": None if recorded is None else round(recorded, 2),
        "controller_cpu_s": round(cpu, 2),
        "rss_idle_kib": rss_idle,
        "rss_held_kib": rss_held,
        "load_before_change": load,
    }
    print(
        f"N={count} {mode} ({len(clients)} client process(es)): holding "
        f"{len(fleet['holding'])}/{count}, errors {len(fleet['errors'])}; holding: "
        f"{describe([t - sent for t in fleet['holding']] or [0])}; heartbeats answered: "
        f"{describe([t - sent for t in fleet['answered']] or [0])}; all reports recorded "
        f"{result['all_reports_recorded_s']} s after the change; controller CPU {cpu:.2f} s; "
        f"RSS {rss_idle / 1024:.0f} → {rss_held / 1024:.0f} MiB; load average {load}"
    )
    if fleet["errors"]:
        print("  first errors:", fleet["errors"][:5])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--per-process",
        type=int,
        default=5000,
        help="agents per client process (a streaming agent opens a second connection to report)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="the modes to run; with one of them, the results are printed and not saved",
    )
    args = parser.parse_args()
    setup_many_connections()
    started = results.start()
    runs = [
        run(count, mode, args.workers, args.per_process)
        for count in args.agents
        for mode in args.modes
    ]
    if set(args.modes) == set(MODES):
        results.save("convergence_stream", {"runs": runs}, started)


# Rendering (docs/PERFORMANCE.md) ---------------------------------------------------------------

MODE_NAMES = {"watch": "long poll", "stream": "event stream"}


def _ms(spread_ms: dict | None, key: str) -> str:
    if spread_ms is None or spread_ms.get(key) is None:
        return "-"
    value = spread_ms[key]
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def per_agent(run: dict) -> float:
    held = run.get("held_before_change") or run["agents"]
    return (run["rss_held_kib"] - run["rss_idle_kib"]) / held


def check(figures: dict, *, required: bool) -> list[str]:
    """Where a run's spreads do not follow from its samples (see convergence.check)."""
    return check_spreads(figures, SPREADS, required=required)


def render(figures: dict) -> str:
    lines = [
        "| N | mode | client processes | waiting before the change | holding / errors "
        "| holding p50 | holding p99 | holding max | heartbeats answered, max "
        "| all reports recorded | controller CPU | controller RSS idle → waiting | per agent "
        "| load average before the change |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in figures["runs"]:
        recorded = run["all_reports_recorded_s"]
        lines.append(
            f"| {run['agents']:,} | {MODE_NAMES[run['mode']]} | {run['client_processes']} | "
            f"{run['held_before_change']:,} | {run['converged']:,} / {run['errors']:,} | "
            f"{_ms(run['holding_ms'], 'p50')} | **{_ms(run['holding_ms'], 'p99')}** | "
            f"**{_ms(run['holding_ms'], 'max')}** | {_ms(run['answered_ms'], 'max')} | "
            + ("not all within 60 s" if recorded is None else f"{recorded:.2f} s")
            + f" | **{run['controller_cpu_s']:.2f} s** | "
            f"{run['rss_idle_kib'] / 1024:.0f} → {run['rss_held_kib'] / 1024:.0f} MiB | "
            f"{per_agent(run):.1f} KiB | "
            + ", ".join(f"{v:.1f}" for v in run["load_before_change"])
            + " |"
        )
    lines += [
        "",
        "Times run from sending the change's PUT; controller CPU from just before the PUT until "
        "one second after the last report was recorded (the long poll's watches asked again "
        "included). p99 is given only for samples of more than 100.",
    ]
    return "\n".join(lines)


def stream_beats_watch(figures: dict, agents: int) -> bool | None:
    """Whether the stream beat the long poll at `agents`: lower holding p99 and max and less
    controller CPU, every agent converged without error in both; None without both runs."""
    pair = {run["mode"]: run for run in figures["runs"] if run["agents"] == agents}
    if set(pair) != set(MODES):
        return None
    watch, stream = pair["watch"], pair["stream"]
    if any(run["errors"] or run["converged"] != agents for run in (watch, stream)):
        return False
    return (
        stream["holding_ms"]["p99"] < watch["holding_ms"]["p99"]
        and stream["holding_ms"]["max"] < watch["holding_ms"]["max"]
        and stream["controller_cpu_s"] < watch["controller_cpu_s"]
    )


def summary(figures: dict) -> list[tuple[str, ...]]:
    rows = []
    for agents in sorted({run["agents"] for run in figures["runs"]}):
        pair = {run["mode"]: run for run in figures["runs"] if run["agents"] == agents}
        if set(pair) != set(MODES):
            continue
        measured = "; ".join(
            f"{MODE_NAMES[mode]} {_ms(pair[mode]['holding_ms'], 'p99')} / "
            f"{_ms(pair[mode]['holding_ms'], 'max')}, {pair[mode]['controller_cpu_s']:.2f} s CPU"
            for mode in MODES
        )
        beats = stream_beats_watch(figures, agents)
        rows.append(
            (
                f"one change → {agents:,} agents: event stream against long poll "
                "(holding p99 / max, controller CPU)",
                "(report)",
                measured,
                "stream ahead" if beats else "stream not ahead",
            )
        )
    return rows


if __name__ == "__main__":
    main()
