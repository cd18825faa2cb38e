"""Faults: the controller, an agent, a worker, Redis and PostgreSQL each stopped under a running
system. What a user checks: /hit keeps answering from the last config, nothing is lost, and the
system comes back by itself."""

import re
import socket
import subprocess
import threading
import time

import pytest
import requests

from apps.agents.services import issue_registration_token, register_agent
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.e2e.conftest import Admin, wait_for_version, worker_version
from tests.e2e.reliability import record, tally_outcomes
from tests.support.processes import (
    PostgresCluster,
    base_env,
    manage,
    server_errors,
    wait_until,
    watches_held,
)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

BACKOFF_CAP = 4.0
# Connection errors the agent logs, each with the delay its backoff chose.
RETRY_LINE = re.compile(
    r"(?:controller unreachable .*next try|answered the watch early; next check) in ([\d.]+) s"
)


class Hitter:
    """Calls GET /hit on workers in a thread until stopped, counting what came back."""

    def __init__(self, worker_urls: list[str], interval: float = 0.1) -> None:
        self.worker_urls = worker_urls
        self.interval = interval
        self.statuses: list[int] = []
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            for url in self.worker_urls:
                try:
                    answer = session.get(f"{url}/hit", timeout=5)
                    self.statuses.append(answer.status_code)
                    self.versions.add(answer.headers.get("X-Config-Version"))
                except requests.RequestException:
                    self.statuses.append(0)
            self._stop.wait(self.interval)

    def __enter__(self) -> "Hitter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def failures(self) -> list[int]:
        return [status for status in self.statuses if status != 200]

    @property
    def failed_outcomes(self) -> list[str]:
        """Of the statuses seen (0: no answer), those that are failures: all but 200."""
        return [str(status) for status in set(self.statuses) if status != 200]

    def wait_for(self, version: str, timeout: float = 5.0) -> None:
        """Wait until a hit answered with `version`: the workers holding it is not enough, the
        next hit may still be on its way."""
        wait_until(
            lambda: version in self.versions,
            timeout=timeout,
            message=f"a hit answered by v{version}",
        )


class StandIn:
    """Listens on a stopped controller's port and hangs up on every connection, noting when
    each came: the agents' attempts as the controller side would see them."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.attempts: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.attempts.append(time.monotonic())
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_controller_stopped(stack, upstream, admin_user):
    _, redis_url, _ = stack.redis()
    controller, url = stack.controller(redis_url)
    port = int(url.rsplit(":", 1)[1])
    admin = Admin(url)
    assert admin.create(upstream.url("/text?v1")).status_code == 201
    workers = [stack.worker()[1] for _ in range(2)]
    agents = [
        stack.agent(url, [worker], f"agent-{n}", AGENT_BACKOFF_CAP=str(BACKOFF_CAP))
        for n, worker in enumerate(workers)
    ]
    wait_for_version(workers, 1)

    errors_5xx = server_errors(url)
    controller.stop()
    stand_in = StandIn(port)
    outage = 8.0
    with Hitter(workers) as hitter:
        time.sleep(outage / 2)
        # A change the agents cannot see yet, made through a second controller.
        second, second_url = stack.controller(redis_url)
        changed = Admin(second_url).change(config_url=upstream.url("/text?v2"))
        assert changed.status_code == 200 and changed.json()["version"] == 2
        time.sleep(max(0.0, outage - (time.monotonic() - stand_in.attempts[0])))
        stand_in.close()
        restarted = time.monotonic()
        stack.controller(redis_url, port=port)
        wait_for_version(workers, 2, timeout=BACKOFF_CAP + 15)
        recover = time.monotonic() - restarted
        hitter.wait_for("2")
    errors_5xx += server_errors(second_url) + server_errors(url)

    # Every /hit was served, from v1 while the controller was away and v2 once it came back.
    assert hitter.statuses and not hitter.failures
    assert hitter.versions == {"1", "2"}
    # The agents backed off: each delay within its ceiling min(cap, 2**n), none above the cap,
    # and the ceiling grew past the first second.
    delays = []
    for agent in agents:
        mine = [float(value) for value in RETRY_LINE.findall(agent.output())]
        assert len(mine) >= 2, agent.output()
        for n, delay in enumerate(mine):
            assert delay <= min(BACKOFF_CAP, 2**n) + 0.05, mine
        delays += mine
    assert max(delays) > 1.0, delays
    gaps = [b - a for a, b in zip(stand_in.attempts, stand_in.attempts[1:], strict=False)]
    # Two agents over the outage: a bounded number of attempts, not a hot loop.
    assert len(stand_in.attempts) <= 2 * (outage / 0.25), stand_in.attempts
    assert recover <= BACKOFF_CAP + 10
    record(
        "controller-stopped",
        f"Both workers answered every /hit (v1, then v2); the agents retried with capped "
        f"backoff (cap {BACKOFF_CAP:g} s); the change made while they were cut off arrived "
        f"after the restart.",
        recover_s=recover,
        outcomes=tally_outcomes(hitter.statuses),
        failed_outcomes=hitter.failed_outcomes,
        unexpected_5xx=errors_5xx,
        versions=({"1", "2"}, hitter.versions),
        agent_retries=len(delays),
        largest_retry_delay_s=max(delays),
        attempts_seen_by_stand_in=len(stand_in.attempts),
        largest_gap_between_attempts_s=max(gaps) if gaps else None,
    )


def test_agent_restarted_while_the_controller_is_down(stack, upstream, admin_user):
    controller, url = stack.controller(None)
    worker, worker_url = stack.worker()
    agent = stack.agent(url, [worker_url])
    assert Admin(url).create(upstream.url("/text?v1")).status_code == 201
    wait_for_version([worker_url], 1)

    errors_5xx = server_errors(url)
    controller.stop()
    agent.stop()
    worker.stop()
    port = int(worker_url.rsplit(":", 1)[1])
    stack.worker(port=port)
    assert worker_version(worker_url) is None
    restarted = time.monotonic()
    stack.agent(url, [worker_url], register=False)

    def served() -> bool:
        answer = requests.get(f"{worker_url}/hit", timeout=5)
        return answer.status_code == 200 and answer.headers["X-Config-Version"] == "1"

    wait_until(served, timeout=10, interval=0.05, message="the worker serves the cached v1")
    recover = time.monotonic() - restarted
    with Hitter([worker_url]) as hitter:
        wait_until(lambda: len(hitter.statuses) >= 10, timeout=10, message="ten hits answered")
    assert not hitter.failures
    assert recover < 5
    record(
        "agent-restarted-controller-down",
        "The restarted agent put its cached config on the empty worker with the controller "
        "still down; /hit answered from v1.",
        recover_s=recover,
        outcomes=tally_outcomes(hitter.statuses),
        failed_outcomes=hitter.failed_outcomes,
        unexpected_5xx=errors_5xx,
        versions=({"1"}, hitter.versions),
    )


def test_worker_restarted(stack, upstream, admin_user):
    _, url = stack.controller(None)
    worker, worker_url = stack.worker()
    check = 3
    stack.agent(url, [worker_url], AGENT_WORKER_CHECK_SECONDS=str(check))
    interval = 30
    assert Admin(url).create(upstream.url("/text?v1"), interval).status_code == 201
    wait_for_version([worker_url], 1)

    worker.stop()
    stack.worker(port=int(worker_url.rsplit(":", 1)[1]))
    # The agent holds a watch of up to pooling_interval, and meanwhile checks its workers every
    # AGENT_WORKER_CHECK_SECONDS: the empty worker is filled long before the watch ends.
    recover = wait_for_version([worker_url], 1, timeout=interval * 17 / 16 + 5)
    with Hitter([worker_url]) as hitter:
        wait_until(lambda: len(hitter.statuses) >= 5, timeout=10, message="five hits answered")
    assert not hitter.failures
    record(
        "worker-restarted",
        f"The agent found the empty worker while holding its watch (pooling_interval "
        f"{interval} s, workers checked every {check} s) and pushed v1 again, with no admin "
        f"action.",
        recover_s=recover,
        outcomes=tally_outcomes(hitter.statuses),
        failed_outcomes=hitter.failed_outcomes,
        unexpected_5xx=server_errors(url),
        versions=({"1"}, hitter.versions),
        cycle_s=interval,
        worker_check_s=check,
    )
    assert recover <= check + 5


def _hold_watch(url: str, token: str, known: int, results: list) -> threading.Thread:
    def run() -> None:
        started = time.monotonic()
        answer = requests.get(
            f"{url}/config/version",
            params={"version": known, "wait": 30},
            headers={"Authorization": f"Bearer {token}"},
            timeout=45,
        )
        results.append((answer.status_code, answer.json(), time.monotonic() - started))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class VersionMonitor:
    """Asks GET /config/version (no wait) every 50 ms; every answer's status and version."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.answers: list[tuple[int, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.token}"
        while not self._stop.is_set():
            try:
                answer = session.get(f"{self.url}/config/version", timeout=5)
                body = answer.json() if answer.status_code == 200 else {}
                self.answers.append((answer.status_code, body.get("version")))
            except requests.RequestException:
                self.answers.append((0, None))
            self._stop.wait(0.05)

    def __enter__(self) -> "VersionMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def test_redis_stopped_and_started(stack, upstream, admin_user):
    redis, redis_url, redis_port = stack.redis()
    controller, url = stack.controller(redis_url, workers=2)
    _, worker_url = stack.worker()
    stack.agent(url, [worker_url])
    admin = Admin(url)
    assert admin.create(upstream.url("/text?v1")).status_code == 201
    wait_for_version([worker_url], 1)
    token = register_agent(token=issue_registration_token()[0])[1]
    statuses: list[int] = []
    delivered = {1}

    with VersionMonitor(url, token) as monitor, Hitter([worker_url], interval=0.2) as hitter:
        held: list = []
        # The agent holds one watch; this test's is the second.
        wait_until(lambda: watches_held(url) >= 1, message="the agent's watch held")
        watch = _hold_watch(url, token, 1, held)
        wait_until(lambda: watches_held(url) >= 2, message="the test's watch held")
        redis.stop()
        stopped = time.monotonic()
        time.sleep(0.5)
        # Logins and changes go on without Redis; the held watch and the agent get them.
        for _ in range(2):
            admin = Admin(url)
        changed = admin.change(config_url=upstream.url("/text?v2"))
        statuses.append(changed.status_code)
        assert changed.json()["version"] == 2
        watch.join(15)
        assert held and held[0][0] == 200, held
        assert held[0][1]["version"] == 2
        assert held[0][1]["config_url"] == upstream.url("/text?v2")
        wait_for_version([worker_url], 2)
        delivered.add(2)
        changed = admin.change(pooling_interval=31)
        statuses.append(changed.status_code)
        wait_for_version([worker_url], 3)
        delivered.add(3)

        redis = stack.restart_redis(redis_port)
        restarted = time.monotonic()
        wait_until(
            lambda: controller.output().count("subscribed") >= 4,
            timeout=20,
            message="both controller processes subscribed again",
        )
        resubscribed = time.monotonic() - restarted
        held = []
        wait_until(lambda: watches_held(url) >= 1, message="the agent's watch held again")
        watch = _hold_watch(url, token, 3, held)
        wait_until(lambda: watches_held(url) >= 2, message="the test's second watch held")
        changed = admin.change(config_url=upstream.url("/text?v4"))
        statuses.append(changed.status_code)
        watch.join(15)
        assert held and held[0][0] == 200 and held[0][1]["version"] == 4, held
        assert held[0][2] < 2.0
        wait_for_version([worker_url], 4)
        delivered.add(4)
        statuses.append(Admin(url).session.get(f"{url}/config/admin", timeout=5).status_code)
        outage = restarted - stopped

    assert statuses == [200, 200, 200, 200]
    codes = [status for status, _ in monitor.answers]
    assert codes and all(code == 200 for code in codes), sorted(set(codes))
    versions = [version for _, version in monitor.answers]
    assert versions == sorted(versions), "the version went backwards"
    assert versions[-1] == 4
    assert not hitter.failures
    errors_5xx = server_errors(url)
    assert errors_5xx == 0, controller.output()[-3000:]
    record(
        "redis-stopped",
        "Logins, changes and held watches went on without Redis (the watch hub re-read the "
        "database); both controller processes subscribed again once Redis was back; the "
        "reported version only rose.",
        recover_s=resubscribed,
        # The monitor's answers and the hits, each tallied by status; only a 200 is right.
        outcomes=tally_outcomes(codes + hitter.statuses),
        failed_outcomes=[str(code) for code in set(codes + hitter.statuses) if code != 200],
        unexpected_5xx=errors_5xx,
        versions=({1, 2, 3, 4}, delivered),
        redis_outage_s=outage,
        versions_delivered=len(delivered),
    )


def _manage(database_url: str, *args: str) -> str:
    result = subprocess.run(
        manage(*args),
        env=base_env(DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _clean_503(answer: requests.Response) -> None:
    assert answer.status_code == 503, (answer.status_code, answer.text[:500])
    assert answer.headers["Content-Type"].startswith("application/json"), answer.headers
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    assert "detail" in answer.json() or answer.json().get("database") == "unavailable"


@pytest.fixture
def postgres():
    if not PostgresCluster.available():
        from tests.conftest import unavailable

        unavailable("initdb and pg_ctl are not installed")
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


def test_postgres_stopped(stack, upstream, postgres):
    database_url = postgres.url
    _manage(database_url, "migrate", "--noinput")
    _manage(database_url, "seed_admin", "--email", ADMIN_EMAIL, "--password", ADMIN_PASSWORD)
    registration = _manage(database_url, "create_registration_token").strip().splitlines()[-1]
    _, url = stack.controller(None, DATABASE_URL=database_url)
    _, worker_url = stack.worker()
    agent = stack.agent(url, [worker_url], register=False, REGISTRATION_TOKEN=registration)
    admin = Admin(url)
    assert admin.create(upstream.url("/text?v1")).status_code == 201
    wait_for_version([worker_url], 1)
    agent_token = (stack.tmp_path / "agent" / "credentials.json").read_text()
    agent_headers = {"Authorization": f"Bearer {_token_of(agent_token)}"}
    refresh_needed = requests.post(
        f"{url}/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, timeout=10
    ).json()["refresh"]

    postgres.stop()
    answers = []
    with Hitter([worker_url]) as hitter:
        time.sleep(1.5)  # any connection the controller held is now broken
        for method, path, kwargs in [
            ("get", "/readyz", {}),
            ("post", "/login", {"json": {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}}),
            ("post", "/login/refresh", {"json": {"refresh": refresh_needed}}),
            ("get", "/config/admin", {"headers": admin.session.headers}),
            ("put", "/config/admin", {"headers": admin.session.headers, "json": {}}),
            ("get", "/config/admin/history", {"headers": admin.session.headers}),
            ("get", "/agents", {"headers": admin.session.headers}),
            ("get", "/config/version", {"headers": agent_headers}),
            ("get", "/config/agent", {"headers": agent_headers}),
        ]:
            answer = requests.request(method, f"{url}{path}", timeout=15, **kwargs)
            answers.append((f"{method.upper()} {path}", answer.status_code))
            _clean_503(answer)
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        time.sleep(1)
        assert agent.alive()

        postgres.start()
        restarted = time.monotonic()

        def ready() -> bool:
            answer = requests.get(f"{url}/readyz", timeout=5)
            if answer.status_code != 200:
                _clean_503(answer)
                answers.append(("GET /readyz", answer.status_code))
            return answer.status_code == 200

        wait_until(ready, timeout=20, message="readyz back to 200")
        recover = time.monotonic() - restarted
        changed = admin.change(config_url=upstream.url("/text?v2"))
        assert changed.status_code == 200, changed.text
        wait_for_version([worker_url], 2)
        hitter.wait_for("2")

    assert hitter.statuses and not hitter.failures
    assert hitter.versions == {"1", "2"}
    # The controller counted every 503 it answered (this test's and the agent's, all by
    # design while the database was away) and no other 5xx.
    seen = sum(1 for _, status in answers if status == 503)
    by_design = server_errors(url) - server_errors(url, except_status="503")
    assert by_design >= seen > 0, (by_design, answers)
    unexpected = server_errors(url, except_status="503")
    record(
        "postgres-stopped",
        "/readyz and every API call answered a clean 503 JSON (no stack trace) while the "
        "workers kept answering /hit from v1; with the database back, /readyz turned 200 and "
        "the next change reached the worker.",
        recover_s=recover,
        outcomes=tally_outcomes(hitter.statuses),
        failed_outcomes=hitter.failed_outcomes,
        unexpected_5xx=unexpected,
        versions=({"1", "2"}, hitter.versions),
        clean_503s_by_design=by_design,
        endpoints_answering_clean_503=len({path for path, _ in answers}),
    )


def _token_of(credentials: str) -> str:
    import json

    return json.loads(credentials)["agent_token"]
