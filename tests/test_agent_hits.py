"""The agent reports its workers' hits per version: each heartbeat carries the hits since the
previous one that was delivered, soon after a version is applied and then every
AGENT_HEARTBEAT_SECONDS, also while a watch is held."""

import subprocess
import sys
import threading
import time

import pytest

from agent.backoff import Backoff
from agent.client import WorkerClient
from agent.daemon import AgentDaemon, WorkerState, hits_since
from apps.agents.models import AgentHits
from apps.agents.services import issue_registration_token
from apps.configs.actions import publish_config
from tests.support.agent import FakeClock, StubController, subprocess_env, write_credentials
from tests.support.processes import ROOT
from tests.support.worker import KEY


def totals() -> dict:
    return {row.version: (row.ok, row.failed) for row in AgentHits.objects.all()}


@pytest.fixture
def clock():
    return FakeClock()


def make_agent(tmp_path, clock, controller_url, workers, **options):
    return AgentDaemon(
        controller_url=controller_url,
        worker_urls=[worker.base_url for worker in workers],
        internal_key=KEY,
        state_dir=str(tmp_path / "state"),
        clock=clock,
        rand=lambda: 1.0,
        connect_timeout=2,
        read_timeout=5,
        **options,
    )


def test_heartbeats_carry_the_hits_since_the_previous_one(
    transactional_db, live_server, make_worker, upstream, tmp_path, clock
):
    worker = make_worker()
    publish_config(config_url=upstream.url("/broken"), pooling_interval=30)
    token, _ = issue_registration_token()
    agent = make_agent(
        tmp_path,
        clock,
        live_server.url,
        [worker],
        registration_token=token,
        watch=False,
        heartbeat_seconds=10,
    )
    try:
        # It should apply v1 and report it at once, before any hit.
        agent.run_once()
        assert agent.applied["version"] == 1
        assert totals() == {}
        for _ in range(3):
            assert worker.hit().status_code == 500

        # It should report the first hits of the new version within 5 s of applying it.
        clock.advance(4.9)
        agent.run_once()
        assert totals() == {}
        clock.advance(0.1)
        agent.run_once()
        assert totals() == {1: (0, 3)}

        # Nothing new: the next heartbeat adds nothing; then every 10 s what came since.
        clock.advance(10)
        agent.run_once()
        assert totals() == {1: (0, 3)}
        assert worker.hit().status_code == 500
        clock.advance(9)
        agent.run_once()
        assert totals() == {1: (0, 3)}
        clock.advance(1)
        agent.run_once()
        assert totals() == {1: (0, 4)}
    finally:
        agent.close()


def test_hits_of_an_undelivered_heartbeat_go_with_the_next(
    transactional_db, live_server, make_worker, upstream, tmp_path, clock
):
    worker = make_worker()
    publish_config(config_url=upstream.url("/text"), pooling_interval=30)
    token, _ = issue_registration_token()
    agent = make_agent(
        tmp_path, clock, live_server.url, [worker], registration_token=token, watch=False
    )
    try:
        agent.run_once()
        for _ in range(2):
            assert worker.hit().status_code == 200
        real_url = agent.controller.base_url
        agent.controller.base_url = "http://127.0.0.1:9"  # nothing listens
        agent.sync_workers()
        agent.send_heartbeat()
        assert totals() == {}

        agent.controller.base_url = real_url
        agent.send_heartbeat()
        assert totals() == {1: (2, 0)}
    finally:
        agent.close()


def worker_state(reported: dict) -> WorkerState:
    state = WorkerState(client=WorkerClient("http://w", KEY), backoff=Backoff())
    state.reported = reported
    return state


def test_hits_since_sums_workers_and_counts_a_restarted_worker_from_zero():
    steady = worker_state({4: (10, 1)})
    restarted = worker_state({4: (50, 5)})

    hits = hits_since([(steady, {3: (7, 0), 4: (12, 4)}), (restarted, {4: (2, 1)})])

    # 3: new; 4: 2 + 3 from the steady worker, 2 + 1 from the restarted one, counted afresh.
    assert hits == [
        {"version": 3, "ok": 7, "failed": 0},
        {"version": 4, "ok": 4, "failed": 4},
    ]


def test_hits_since_leaves_out_versions_with_nothing_new():
    assert hits_since([(worker_state({4: (10, 1)}), {4: (10, 1)})]) == []


def test_heartbeats_go_on_time_while_a_watch_is_held(make_worker, tmp_path):
    worker = make_worker()
    write_credentials(tmp_path / "state")
    controller = StubController(hold=3)
    controller.start()
    agent = AgentDaemon(
        controller_url=controller.url,
        worker_urls=[worker.base_url],
        internal_key=KEY,
        state_dir=str(tmp_path / "state"),
        heartbeat_seconds=0.5,
        default_interval=3,
    )
    try:
        stop = threading.Event()
        agent.start()
        started = time.monotonic()
        agent.run_once(stop)
        elapsed = time.monotonic() - started
    finally:
        agent.close()
        controller.stop()

    heartbeats = [path for path, _ in controller.requests if path == "/agent/heartbeat"]
    assert elapsed >= 2.5
    # One every half second while the 3 s watch was held (generous for a loaded machine).
    assert len(heartbeats) >= 3, controller.requests


def test_run_agent_refuses_a_heartbeat_period_that_is_not_positive(tmp_path):
    env = subprocess_env(tmp_path, INTERNAL_KEY=KEY)
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "run_agent",
            "--controller-url",
            "http://127.0.0.1:9",
            "--worker-url",
            "http://127.0.0.1:9",
            "--heartbeat-seconds",
            "0",
            "--once",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "AGENT_HEARTBEAT_SECONDS" in result.stderr
