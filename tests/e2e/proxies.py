"""Debian's pgbouncer, HAProxy and Redis Sentinel as real processes on free loopback ports, for
the tests of the deployments that put them in front of the controller, PostgreSQL and Redis."""

import csv
import io
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import redis
import requests

from tests.conftest import unavailable
from tests.support.processes import ROOT, Process, free_port, wait_until


def binary(name: str, package: str | None = None) -> str:
    """The path of a Debian binary; a skip (a failure under REQUIRE_SERVICES=1) without it."""
    found = shutil.which(name) or next(
        (str(Path(d) / name) for d in ("/usr/sbin", "/sbin") if (Path(d) / name).exists()), None
    )
    if found is None:
        unavailable(f"{name} is not installed (Debian: apt-get install {package or name})")
    return found


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Pgbouncer:
    """pgbouncer in transaction mode with its stock settings, in front of one database of the
    shared PostgreSQL. It refuses to run as root, so as root it runs as `postgres`."""

    def __init__(self, database: str, host: str, port: int, user: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.port = free_port()
        self.database = database
        self.user = user
        self.url = f"postgres://{user}@127.0.0.1:{self.port}/{database}"
        (self.directory / "userlist.txt").write_text(f'"{user}" ""\n')
        (self.directory / "pgbouncer.ini").write_text(
            f"[databases]\n"
            f"{database} = host={host} port={port} dbname={database}\n"
            f"[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir =\n"
            f"auth_type = trust\n"
            f"auth_file = {self.directory / 'userlist.txt'}\n"
            f"pool_mode = transaction\n"
            f"admin_users = {user}\n"
            f"max_client_conn = 400\n"
            f"default_pool_size = 20\n"
        )
        command = [binary("pgbouncer"), str(self.directory / "pgbouncer.ini")]
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
            for path in self.directory.iterdir():
                shutil.chown(path, "postgres")
            # setpriv execs pgbouncer itself (runuser would wrap it in a session that delays
            # every stop by two seconds).
            command = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *command]
        self.process = Process(command, dict(os.environ), "pgbouncer")
        try:
            wait_until(lambda: listening(self.port), timeout=10, message="pgbouncer listening")
        except AssertionError:
            self.stop()
            raise AssertionError(f"pgbouncer did not start:\n{self.process.output()}") from None

    def console(self, command: str) -> str:
        """A command on pgbouncer's admin console (it speaks the simple query protocol only)."""
        result = subprocess.run(
            [
                binary("psql", "postgresql-client"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-At",
                "-c",
                command,
                "pgbouncer",
            ],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class Haproxy:
    """deploy/haproxy.cfg itself, run by Debian's haproxy in front of the given controllers."""

    CONFIG = ROOT / "deploy" / "haproxy.cfg"

    def __init__(self, controllers: list[str]) -> None:
        self.port = free_port()
        self.stats_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "HAPROXY_BIND": f"127.0.0.1:{self.port}",
            "HAPROXY_STATS_BIND": f"127.0.0.1:{self.stats_port}",
            # Within the file descriptors a test process may open.
            "HAPROXY_MAXCONN": "2000",
        }
        for n, address in enumerate(controllers, start=1):
            env[f"CONTROLLER_{n}"] = address
        self.process = Process([binary("haproxy"), "-db", "-f", str(self.CONFIG)], env, "haproxy")
        try:
            wait_until(lambda: listening(self.port), timeout=10, message="haproxy listening")
        except AssertionError:
            self.process.stop()
            raise AssertionError(f"haproxy did not start:\n{self.process.output()}") from None

    def servers(self) -> dict[str, dict[str, str]]:
        """The backend's servers as the stats page shows them: status, scur (sessions now),
        stot (sessions in all)."""
        answer = requests.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5)
        rows = csv.DictReader(io.StringIO(answer.text.lstrip("# ")))
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == "controllers" and row["svname"] not in ("FRONTEND", "BACKEND")
        }


class SentinelGroup:
    """A Redis master, one replica and three sentinels (redis-server in sentinel mode), each on
    a free port, watching the master under the name MASTER."""

    MASTER = "mymaster"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.redis_server = binary("redis-server")
        self.master_port, self.replica_port = free_port(), free_port()
        self.master = self._redis(self.master_port)
        self.replica = self._redis(
            self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port)
        )
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels = [self._sentinel(port) for port in self.sentinel_ports]
        wait_until(self._ready, timeout=30, interval=0.2, message="sentinels know each other")

    def _redis(self, port: int, *args: str) -> Process:
        process = Process(
            [
                self.redis_server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *args,
            ],
            dict(os.environ),
            f"redis-{port}",
        )
        wait_until(lambda: listening(port), timeout=10, message=f"redis on {port}")
        return process

    def _sentinel(self, port: int) -> Process:
        config = self.directory / f"sentinel-{port}.conf"
        # Sentinels rewrite their file as they learn the group, so each has its own.
        config.write_text(
            f"port {port}\nbind 127.0.0.1\n"
            f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
            f"sentinel failover-timeout {self.MASTER} 10000\n"
            f"sentinel parallel-syncs {self.MASTER} 1\n"
        )
        process = Process(
            [self.redis_server, str(config), "--sentinel"], dict(os.environ), "sentinel"
        )
        wait_until(lambda: listening(port), timeout=10, message=f"sentinel on {port}")
        return process

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)

    def _ready(self) -> bool:
        for port in self.sentinel_ports:
            sentinel = self.client(port)
            if len(sentinel.sentinel_sentinels(self.MASTER)) < 2:
                return False
            replicas = sentinel.sentinel_slaves(self.MASTER)
            if not any(
                r["port"] == self.replica_port and not r["is_odown"] and not r["is_sdown"]
                for r in replicas
            ):
                return False
        return True

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def master_port_now(self) -> int:
        """The master's port as the sentinels' majority reports it."""
        ports = []
        for port in self.sentinel_ports:
            try:
                ports.append(
                    int(self.client(port).sentinel_get_master_addr_by_name(self.MASTER)[1])
                )
            except redis.RedisError:
                continue
        return max(set(ports), key=ports.count)

    def processes(self) -> list[Process]:
        return [self.master, self.replica, *self.sentinels]
