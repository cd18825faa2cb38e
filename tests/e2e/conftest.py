"""Fixtures of the end-to-end suite: real processes on free ports, always stopped.

Every process a test starts goes through the `stack` fixture, which stops them all when the test
ends, passed or failed, and prints their output when it failed.
"""

import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from apps.agents.models import Agent
from apps.agents.services import issue_registration_token
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, unavailable
from tests.support.processes import (
    Process,
    restart_redis,
    start_agent,
    start_controller,
    start_redis,
    start_worker,
    wait_until,
)

INTERNAL_KEY = "e2e-internal-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def _fast_password_hashing():
    """Passwords hashed as in production here: the controller processes check them."""


class Admin:
    """An admin session against one controller: a JWT from POST /login and the config calls."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.login()

    def login(self) -> None:
        answer = self.session.post(
            f"{self.url}/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        self.session.headers["Authorization"] = f"Bearer {answer.json()['access']}"

    def create(self, config_url: str, pooling_interval: int = 30) -> requests.Response:
        return self.session.post(
            f"{self.url}/config/admin",
            json={"config_url": config_url, "pooling_interval": pooling_interval},
            timeout=15,
        )

    def change(self, **fields) -> requests.Response:
        return self.session.put(f"{self.url}/config/admin", json=fields, timeout=15)


class AdminReads:
    """Admins reading the config in a loop from a thread, each read retried `retries` times:
    the reads that still failed (any answer but a 200, or no answer) are kept."""

    def __init__(self, admins: list[Admin], retries: int = 0) -> None:
        self.admins = admins
        self.retries = retries
        self.calls = 0
        self.retried = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _read(admin: Admin) -> str | None:
        try:
            answer = admin.session.get(f"{admin.url}/config/admin", timeout=10)
        except requests.RequestException as exc:
            return repr(exc)
        return None if answer.status_code == 200 else f"{answer.status_code} {answer.text[:200]}"

    def _run(self) -> None:
        while not self._stop.is_set():
            for admin in self.admins:
                self.calls += 1
                problem = self._read(admin)
                for _ in range(self.retries):
                    if problem is None:
                        break
                    self.retried += 1
                    problem = self._read(admin)
                if problem is not None:
                    self.failed.append(problem)
            self._stop.wait(0.05)

    def __enter__(self) -> "AdminReads":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)


class Stack:
    """Starts controllers, workers, agents and Redis for one test and stops them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[Process] = []

    def _keep(self, process: Process) -> Process:
        self.processes.append(process)
        return process

    def redis(self) -> tuple[Process, str, int]:
        if shutil.which("redis-server") is None:
            unavailable("redis-server is not installed")
        process, url, port = start_redis()
        return self._keep(process), url, port

    def restart_redis(self, port: int) -> Process:
        return self._keep(restart_redis(port))

    def controller(self, redis_url: str | None, **env: str) -> tuple[Process, str]:
        process, url = start_controller(redis_url=redis_url, **env)
        return self._keep(process), url

    def worker(self, port: int | None = None, **env: str) -> tuple[Process, str]:
        process, url = start_worker(INTERNAL_KEY, port=port, **env)
        return self._keep(process), url

    def agent(
        self,
        controller_url: str,
        worker_urls: list[str],
        name: str = "agent",
        *,
        register: bool = True,
        allow_agent_labels: bool | None = None,
        registration_token: str | None = None,
        **env: str,
    ) -> Process:
        """An agent whose state lives in tmp_path/<name>; `register` gives it a fresh
        registration token of the default scope, or `registration_token` when given (a
        restarted agent reuses its stored credentials instead). The fresh token takes the
        agent's own labels (AGENT_LABELS) unless `allow_agent_labels` is False."""
        allow = "AGENT_LABELS" in env if allow_agent_labels is None else allow_agent_labels
        token = registration_token
        if token is None and register:
            token = issue_registration_token(allow_agent_labels=allow)[0]
        return self._keep(
            start_agent(
                controller_url,
                worker_urls,
                self.tmp_path / name,
                internal_key=INTERNAL_KEY,
                registration_token=token,
                **env,
            )
        )

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def stack(tmp_path, request):
    started = Stack(tmp_path)
    yield started
    started.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for process in started.processes:
            print(
                f"----- {process.name} (pid {process.popen.pid}) -----\n{process.output()[-6000:]}"
            )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def fleet(stack, upstream, admin_user):
    """A controller with Redis and two workers, each with an agent reporting every second, all
    on version 1 (the upstream's /text): (admin, worker URLs)."""
    _, redis_url, _ = stack.redis()
    _, url = stack.controller(redis_url)
    admin = Admin(url)
    assert admin.create(upstream.url("/text")).status_code == 201
    workers = [stack.worker(WORKER_BLOCK_PRIVATE_UPSTREAMS="0")[1] for _ in range(2)]
    for n, worker in enumerate(workers):
        stack.agent(url, [worker], f"agent-{n}", AGENT_HEARTBEAT_SECONDS="1")
    wait_for_version(workers, 1, timeout=60)
    return admin, workers


def worker_version(worker_url: str) -> int | None:
    return requests.get(f"{worker_url}/health", timeout=5).json()["config_version"]


def wait_for_version(worker_urls: list[str], version: int, timeout: float = 20.0) -> float:
    """Wait until every worker holds `version`; the seconds it took."""
    started = time.monotonic()
    wait_until(
        lambda: all(worker_version(url) == version for url in worker_urls),
        timeout=timeout,
        interval=0.1,
        message=f"workers {worker_urls} at v{version}",
    )
    return time.monotonic() - started


def start_canary_fleet(stack, url: str, **agent_env: str) -> list[str]:
    """Four agents with a worker each on the controller at `url`, the first labelled
    ring=canary and the others ring=main, reporting every second; back once every worker holds
    version 1 and the canary is registered with its label. The worker URLs, the canary's first."""
    workers = [stack.worker()[1] for _ in range(4)]
    for index, worker in enumerate(workers):
        stack.agent(
            url,
            [worker],
            f"agent-{index}",
            AGENT_LABELS="ring=canary" if index == 0 else "ring=main",
            AGENT_HEARTBEAT_SECONDS="1",
            **agent_env,
        )
    wait_for_version(workers, 1, timeout=60)
    wait_until(
        lambda: Agent.objects.filter(labels={"ring": "canary"}).count() == 1,
        timeout=20,
        message="the canary registered with its label",
    )
    return workers


def unique_path() -> str:
    return f"/text?{uuid.uuid4().hex[:8]}"
