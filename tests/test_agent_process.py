"""The agent as a real `manage.py run_agent` process, and its timing against held watches."""

import json
import signal
import subprocess
import sys
import time

import pytest

from agent.daemon import AgentDaemon
from apps.agents.models import Agent as AgentRecord
from apps.agents.services import issue_registration_token
from apps.configs.actions import publish_config
from tests.support.agent import (
    StubController,
    subprocess_env,
    write_credentials,
)
from tests.support.processes import ROOT, manage, wait_until
from tests.support.worker import KEY


def run_agent(tmp_path, controller_url: str, worker_url: str, *args: str, **env: str):
    return subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "run_agent",
            "--controller-url",
            controller_url,
            "--worker-url",
            worker_url,
            "--state-dir",
            str(tmp_path / "state"),
            *args,
        ],
        cwd=ROOT,
        env=subprocess_env(tmp_path, INTERNAL_KEY=KEY, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_and_time(process: subprocess.Popen) -> tuple[int, float, str]:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"run_agent did not stop on SIGTERM:\n{output}")
    return process.returncode, time.monotonic() - started, output


@pytest.fixture
def stub_controller():
    controller = StubController(hold=30)
    controller.start()
    yield controller
    controller.stop()


def test_sigterm_stops_run_agent_quickly_and_leaves_the_cache_intact(
    live_server,
    make_worker,
    upstream,
    tmp_path,
):
    worker = make_worker()
    publish_config(config_url=upstream.url("/text"), pooling_interval=30)
    token, _ = issue_registration_token()
    process = run_agent(tmp_path, live_server.url, worker.base_url, REGISTRATION_TOKEN=token)
    try:
        wait_until(lambda: (tmp_path / "state" / "config.json").exists(), timeout=20)
        # The cache is written before the push, and the heartbeat that reports v1 follows it:
        # once the controller has it, the agent is back in its watch.
        wait_until(lambda: worker.version() == 1, timeout=20)
        wait_until(lambda: AgentRecord.objects.filter(applied_version=1).exists(), timeout=20)
    except AssertionError:
        pytest.fail(f"no config.json: {stop_and_time(process)[2]}")
    returncode, elapsed, output = stop_and_time(process)
    assert worker.version() == 1, output

    assert returncode == 0, output
    assert elapsed < 2, output
    cached = json.loads((tmp_path / "state" / "config.json").read_text())
    assert cached["version"] == 1
    assert "registered as agent" in output
    assert "pushed v1 to worker" in output
    assert token not in output
    assert KEY not in output


def test_sigterm_abandons_a_held_watch(stub_controller, make_worker, tmp_path):
    worker = make_worker()
    write_credentials(tmp_path / "state")
    process = run_agent(tmp_path, stub_controller.url, worker.base_url)
    try:
        # The reconciliation at start (GET /config/agent), then the watch, which the stub's
        # handler holds once it has noted it.
        wait_until(lambda: len(stub_controller.requests) >= 2, timeout=20)
    finally:
        returncode, elapsed, output = stop_and_time(process)

    assert returncode == 0, output
    assert elapsed < 2, output
    assert stub_controller.requests[0] == ("/config/agent", "")
    path, query = stub_controller.requests[1]
    assert path == "/config/version"
    assert query == "version=0&wait=10"
    assert "agt_test" not in output


def test_once_runs_a_single_cycle_and_no_watch_polls_plainly(
    stub_controller,
    make_worker,
    tmp_path,
):
    worker = make_worker()
    write_credentials(tmp_path / "state")
    process = run_agent(tmp_path, stub_controller.url, worker.base_url, "--once", "--no-watch")
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert stub_controller.requests == [
        ("/config/agent", ""),
        ("/config/version", ""),
        ("/agent/heartbeat", ""),
    ]


def test_a_held_watch_is_followed_at_once_and_an_immediate_answer_waits_the_period(
    make_worker,
    tmp_path,
):
    # The stub holds a watch for its whole wait, as the long poll will: the agent then checks
    # again without sleeping. Answered at once (plain poll), it sleeps the whole period.
    worker = make_worker()
    controller = StubController(hold=2)
    controller.start()
    write_credentials(tmp_path / "state")
    try:
        for watch, expected in ((True, 0.0), (False, 2.0)):
            agent = AgentDaemon(
                controller_url=controller.url,
                worker_urls=[worker.base_url],
                internal_key=KEY,
                state_dir=str(tmp_path / "state"),
                watch=watch,
                default_interval=2,
            )
            delay = agent.run_once()
            agent.close()
            assert abs(delay - expected) < 0.3, (watch, delay)
    finally:
        controller.stop()
    assert [query for path, query in controller.requests if path == "/config/version"] == [
        "version=0&wait=2",
        "",
    ]


def test_without_credentials_or_a_token_it_says_what_it_needs_and_waits(
    stub_controller, make_worker, tmp_path
):
    # What compose's `up -d` does before the operator has issued a token: the agent keeps
    # running, registers nothing, and says how to give it a token.
    worker = make_worker()
    log = tmp_path / "agent.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            manage(
                "run_agent",
                "--controller-url",
                stub_controller.url,
                "--worker-url",
                worker.base_url,
                "--state-dir",
                str(tmp_path / "state"),
            ),
            cwd=ROOT,
            env=subprocess_env(tmp_path, INTERNAL_KEY=KEY),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_until(lambda: "no usable registration token" in log.read_text(), timeout=20)
        assert "issue a registration token" in log.read_text()
        assert process.poll() is None, log.read_text()
    finally:
        returncode, _, _ = stop_and_time(process)
    assert returncode == 0, log.read_text()
    assert not any(path == "/agent/register" for path, _ in stub_controller.requests)
    assert not (tmp_path / "state" / "credentials.json").exists()
