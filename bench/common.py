"""Shared pieces of the benchmarks: a bench database, agents, a controller, a tiny HTTP client."""

import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench"
)
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")


def setup_django() -> None:
    """Point this process at the bench database and Redis, create the database, migrate."""
    import psycopg

    os.environ["DATABASE_URL"] = BENCH_DATABASE_URL
    os.environ["REDIS_URL"] = BENCH_REDIS_URL
    # Made afresh for each run: the controller refuses a key published in the repository.
    os.environ.setdefault("SECRET_KEY", f"key-{secrets.token_hex(32)}")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controller_site.settings")
    name = BENCH_DATABASE_URL.rsplit("/", 1)[1]
    with psycopg.connect(BENCH_DATABASE_URL.rsplit("/", 1)[0] + "/postgres", autocommit=True) as db:
        if not db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            db.execute(f'CREATE DATABASE "{name}"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def setup_many_connections() -> None:
    """For a client of thousands of connections: as many open files as allowed, uvloop, and
    Django on the bench database."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    setup_django()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmarked process: the bench database and Redis, quiet logs."""
    from tests.support.processes import base_env

    return base_env(
        DATABASE_URL=BENCH_DATABASE_URL,
        REDIS_URL=BENCH_REDIS_URL,
        CONTROLLER_ACCESS_LOG="0",
        LOG_LEVEL="WARNING",
        # Some benchmarks share a token among many clients, and they measure how many watches
        # a process holds: no caps on held watches.
        CONTROLLER_MAX_WATCHES_PER_AGENT="0",
        CONTROLLER_MAX_WATCHES="0",
        **extra,
    )


def start_controller(workers: int, **extra: str):
    """`run_controller` on a free port with the bench database and Redis, ready; returns
    (process, base URL)."""
    from tests.support.processes import start_controller

    return start_controller(
        redis_url=BENCH_REDIS_URL,
        workers=workers,
        DATABASE_URL=BENCH_DATABASE_URL,
        CONTROLLER_ACCESS_LOG="0",
        LOG_LEVEL="WARNING",
        # Some benchmarks share a token among many clients, and they measure how many watches
        # a process holds: no caps on held watches.
        CONTROLLER_MAX_WATCHES_PER_AGENT="0",
        CONTROLLER_MAX_WATCHES="0",
        **extra,
    )


def reset_state() -> None:
    from django.core.cache import cache

    from apps.accounts.models import User
    from apps.agents.models import Agent, RegistrationToken
    from apps.configs.models import ConfigVersion
    from apps.rollouts.models import Rollout

    Rollout.objects.all().delete()
    RegistrationToken.objects.all().delete()
    Agent.objects.all().delete()
    ConfigVersion.objects.all().delete()
    User.objects.all().delete()
    User.objects.create_superuser(email="bench@example.com", password="Bench-pass-123")
    cache.clear()


def make_agents(count: int) -> list[str]:
    """Create `count` agents directly (registration is measured elsewhere); returns tokens."""
    from apps.agents.models import Agent
    from controller_site.tokens import AGENT_PREFIX, hash_token, new_token

    tokens = [new_token(AGENT_PREFIX) for _ in range(count)]
    Agent.objects.bulk_create(
        [Agent(name=f"bench-{i}", token_hash=hash_token(t)) for i, t in enumerate(tokens)],
        batch_size=2000,
    )
    return tokens


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children (the controller's workers), as
    the kernel counts it."""
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):  # the process has already gone
        pids += [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    ticks = os.sysconf("SC_CLK_TCK")
    for each in pids:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def describe(values: list[float]) -> str:
    """One line for the console: min, p50, p99 (only for more than 100 values) and max."""
    from bench.results import p99_or_none

    ms = [v * 1000 for v in values]
    p99 = p99_or_none(ms)
    return (
        f"min {min(ms):.1f} ms, p50 {statistics.median(ms):.1f} ms, "
        + (f"p99 {p99:.1f} ms, " if p99 is not None else "")
        + f"max {max(ms):.1f} ms (n={len(ms)})"
    )


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children, in KiB."""
    total = 0
    pids = [pid]
    children_path = Path(f"/proc/{pid}/task/{pid}/children")
    if children_path.exists():
        pids += [int(p) for p in children_path.read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


async def http_get(
    host: str, port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One GET on a fresh connection: small and cheap enough to hold thousands at once.

    Returns as soon as Content-Length bytes of body are in, as an HTTP client library would,
    without waiting for the server to close the connection.
    """
    return await http_request(host, port, "GET", path, headers)


async def http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, bytes]:
    """One request on a fresh connection (see http_get)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        return await exchange(reader, writer, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    finally:
        writer.close()


async def exchange(reader, writer, request: bytes) -> tuple[int, bytes]:
    """Send one request on a connection and read its answer by Content-Length."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def controller_with_agents(count: int, workers: int):
    """A fresh bench state with `count` agents and version 1, and `run_controller` on it,
    warmed up. Returns (process, URL, agent tokens, admin headers, idle RSS in KiB)."""
    import requests

    from apps.configs.actions import publish_config

    reset_state()
    tokens = make_agents(count)
    publish_config(config_url="http://127.0.0.1:9/bench", pooling_interval=30)
    controller, url = start_controller(workers)
    try:
        headers = admin_headers(url)
        # Warm the PUT path (a no-op change: same content, no new version) so that the
        # measured change does not pay for first-request imports and connections.
        for _ in range(3):
            requests.put(
                f"{url}/config/admin", json={"pooling_interval": 30}, headers=headers, timeout=10
            )
        time.sleep(1)
    except BaseException:
        controller.stop()
        raise
    return controller, url, tokens, headers, rss_kib(controller.popen.pid)


async def wait_until_all_held(count: int, timeout: float = 120) -> None:
    """Until every agent's watch is held: its last_seen is written when the watch is
    authenticated, just before the request starts to wait."""
    from apps.agents.models import Agent

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = await asyncio.to_thread(
            lambda: Agent.objects.filter(last_seen__isnull=False).count()
        )
        if held >= count:
            await asyncio.sleep(1)
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"only {held} of {count} watches held after {timeout:.0f} s")


def admin_headers(url: str) -> dict[str, str]:
    """The bench admin's Authorization header, from POST /login."""
    import requests

    answer = requests.post(
        f"{url}/login",
        json={"email": "bench@example.com", "password": "Bench-pass-123"},
        timeout=10,
    )
    return {"Authorization": "Bearer " + answer.json()["access"]}


def machine_note() -> dict:
    """What a figure depends on besides the code: when, and how busy the machine was."""
    one, five, fifteen = os.getloadavg()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "load_average": [round(one, 2), round(five, 2), round(fifteen, 2)],
    }
