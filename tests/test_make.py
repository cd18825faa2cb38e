"""The README's make targets as a user runs them: `make run-agent` against a running controller,
and `make run` stopped by SIGTERM."""

import os
import signal
import subprocess
from pathlib import Path

import pytest

from apps.agents.models import Agent
from tests.support import processes
from tests.support.processes import (
    ROOT,
    Process,
    base_env,
    dead_port,
    free_port,
    manage,
    start_controller,
    wait_until,
)
from tests.test_stack import child_pids, pid_alive, stack_env


def make(target: str, env: dict[str, str], **variables: str) -> Process:
    args = ["make", "--no-print-directory", target, *(f"{k}={v}" for k, v in variables.items())]
    return Process(args, env, f"make-{target}")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_make_run_agent_registers_a_new_agent_with_a_running_controller(tmp_path):
    controller, url = start_controller(redis_url=None)
    var_dir = tmp_path / "var"
    # No worker: registering needs only the controller.
    env = base_env(DATABASE_URL=processes.test_database_url(), CONTROLLER_URL=url)
    for name in ("REGISTRATION_TOKEN", "AGENT_STATE_DIR", "INTERNAL_KEY"):
        env.pop(name, None)
    with dead_port() as port:
        env["WORKER_URL"] = f"http://127.0.0.1:{port}"
        agent = make("run-agent", env, VAR_DIR=str(var_dir))
        try:
            credentials = var_dir / "agent" / "credentials.json"
            wait_until(
                lambda: credentials.exists() or not agent.alive(),
                timeout=60,
                message="the agent's credentials under VAR_DIR/agent",
            )
            assert credentials.exists(), agent.output()
            assert Agent.objects.count() == 1
            assert "registered" in agent.output().lower(), agent.output()
        finally:
            agent.stop()
            controller.stop()


@pytest.mark.timeout(180)
def test_sigterm_to_make_run_stops_the_stack_and_its_children(tmp_path):
    env = stack_env(
        tmp_path / "var",
        CONTROLLER_BIND=f"127.0.0.1:{free_port()}",
        WORKER_BIND=f"127.0.0.1:{free_port()}",
    )
    process = make("run", env, VAR_DIR=str(tmp_path / "var"))
    try:
        wait_until(
            lambda: "The stack is up." in process.output() or not process.alive(),
            timeout=120,
            message="run_stack banner",
        )
        assert process.alive(), process.output()
        pids = child_pids(process.output())
        assert set(pids) == {"controller", "worker", "agent"}, process.output()
        children = Path(f"/proc/{process.popen.pid}/task/{process.popen.pid}/children")
        (stack_pid,) = [int(pid) for pid in children.read_text().split()]
        # SIGTERM to make alone, as a service manager or `kill` sends it: not to its group.
        os.kill(process.popen.pid, signal.SIGTERM)
        process.popen.wait(60)
        wait_until(
            lambda: not any(pid_alive(pid) for pid in [stack_pid, *pids.values()]),
            timeout=30,
            message="run_stack and its three children gone",
        )
    finally:
        process.stop()
    assert "stopped" in process.log_path.read_text().lower()


def run_make(*args: str, env: dict[str, str], timeout: float = 300):
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(("target", "page"), [("docs-view", "docs"), ("docs-redoc", "redoc")])
def test_the_docs_targets_open_the_controller_at_controller_bind(target, page):
    # webbrowser runs $BROWSER with the URL: echo shows which one it was asked to open.
    env = base_env(BROWSER="echo", CONTROLLER_BIND="127.0.0.1:9123")
    result = run_make(target, env=env)
    assert result.returncode == 0, result.stderr
    assert f"http://127.0.0.1:9123/api/{page}/" in result.stdout.splitlines()


def test_build_static_writes_the_manifest_that_turns_hashed_names_on(tmp_path):
    static_root = tmp_path / "static"
    result = run_make("build-static", env=base_env(STATIC_ROOT=str(static_root)))
    assert result.returncode == 0, result.stderr
    assert (static_root / "staticfiles.json").exists()
    shown = subprocess.run(
        manage("show_settings"),
        cwd=ROOT,
        env=base_env(STATIC_ROOT=str(static_root)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert any(
        line.split()[:3] == ["STATICFILES_MANIFEST", "default", "True"]
        for line in shown.splitlines()
    ), shown
