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

import requests

from tests.conftest import unavailable
from tests.support.processes import ROOT, Process, free_port, wait_until


def binary(name: str) -> str:
    """The path of a Debian binary; a skip (a failure under REQUIRE_SERVICES=1) without it."""
    found = shutil.which(name) or next(
        (str(Path(d) / name) for d in ("/usr/sbin", "/sbin") if (Path(d) / name).exists()), None
    )
    if found is None:
        unavailable(f"{name} is not installed (Debian: apt-get install {name})")
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
                "psql",
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
