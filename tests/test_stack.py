"""`manage.py run_stack` (what `make run` runs) as a real process on free ports, end to end."""

import json
import re
import signal
import socket
from pathlib import Path

import pytest
import requests

from tests.support.metrics import DEFAULT_SCOPE, sample
from tests.support.processes import ROOT, Process, base_env, free_port, manage, wait_until

STACK_PASSWORD = "Stack-Admin-Secret-731!"
WRONG_PASSWORD = "Wrong-Guess-Secret-902!"
# What the upstream stub's /text answers.
UPSTREAM_BODY = b"203.0.113.7\n"


def stack_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """A fresh machine: no SECRET_KEY, no DATABASE_URL, no REDIS_URL; DEBUG=1 as `make run`."""
    env = base_env(DEBUG="1", VAR_DIR=str(var_dir), ADMIN_PASSWORD=STACK_PASSWORD, **extra)
    for name in ("SECRET_KEY", "INTERNAL_KEY", "REGISTRATION_TOKEN", "AGENT_STATE_DIR"):
        env.pop(name, None)
    return env


def start_stack(var_dir: Path, **extra: str):
    controller_port, worker_port = free_port(), free_port()
    process = Process(
        manage(
            "run_stack",
            "--controller-bind",
            f"127.0.0.1:{controller_port}",
            "--worker-bind",
            f"127.0.0.1:{worker_port}",
        ),
        stack_env(var_dir, **extra),
        "stack",
    )
    try:
        wait_until(
            lambda: "The stack is up." in process.output() or not process.alive(),
            timeout=90,
            message="run_stack banner",
        )
    except AssertionError:
        process.stop()
        raise AssertionError(f"run_stack did not come up:\n{process.output()}") from None
    assert process.alive(), process.output()
    return process, f"http://127.0.0.1:{controller_port}", f"http://127.0.0.1:{worker_port}"


def child_pids(output: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"started (\w+) \(pid (\d+)\)", output)}


def pid_alive(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # A zombie has exited; it only waits for its parent to collect it.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def login(controller: str, password: str = STACK_PASSWORD) -> requests.Response:
    return requests.post(
        f"{controller}/login",
        json={"email": "admin@distributed-system.com", "password": password},
        timeout=10,
    )


@pytest.mark.timeout(240)
def test_run_stack_serves_hit_from_the_configured_url_and_a_second_run_reuses_everything(
    tmp_path, upstream
):
    var_dir = tmp_path / "var"
    stack, controller, worker = start_stack(var_dir, LOG_FORMAT="json")
    secrets_seen: list[str] = [STACK_PASSWORD, WRONG_PASSWORD]
    try:
        output = stack.output()
        assert f"{controller}/admin/" in output and f"{controller}/api/docs/" in output
        assert "curl" in output and f"{worker}/hit" in output
        # A custom password is not printed, only named.
        assert "(the ADMIN_PASSWORD you set)" in output
        # The local demo fetches a local upstream, so it says it let the worker do so.
        assert "WORKER_BLOCK_PRIVATE_UPSTREAMS is off for this local demo" in output
        # And let the controller send webhooks to local receivers.
        assert "WEBHOOKS_BLOCK_PRIVATE_URLS is off for this local demo" in output

        assert login(controller, WRONG_PASSWORD).status_code == 401
        answer = login(controller)
        assert answer.status_code == 200, answer.text
        tokens = answer.json()
        secrets_seen += [tokens["access"], tokens["refresh"]]
        admin = {"Authorization": f"Bearer {tokens['access']}"}
        local_hook = requests.post(
            f"{controller}/webhooks",
            json={"url": "http://127.0.0.1:9/hook", "events": ["*"], "enabled": False},
            headers=admin,
            timeout=10,
        )
        assert local_hook.status_code == 201, local_hook.text
        secrets_seen.append(local_hook.json()["secret"])
        created = requests.post(
            f"{controller}/config/admin",
            json={"config_url": upstream.url("/text"), "pooling_interval": 30},
            headers=admin,
            timeout=10,
        )
        assert created.status_code == 201, created.text

        def hit_answers():
            response = requests.get(f"{worker}/hit", timeout=5)
            return response.status_code == 200 and response.content == UPSTREAM_BODY

        wait_until(hit_answers, timeout=30, message="/hit through the stack")

        # Registration over HTTP too, so its tokens are among the secrets looked for below.
        issued = requests.get(f"{controller}/agent/admin", headers=admin, timeout=10).json()
        registered = requests.post(
            f"{controller}/agent/register",
            headers={"Authorization": f"Bearer {issued['registration_token']}"},
            json={"name": "probe"},
            timeout=10,
        )
        assert registered.status_code == 201, registered.text
        secrets_seen += [issued["registration_token"], registered.json()["agent_token"]]

        metrics = requests.get(f"{controller}/metrics", timeout=10).text
        assert sample(metrics, "controller_config_version", **DEFAULT_SCOPE) == 1
        agents = {
            status: sample(metrics, "controller_agents", status=status, **DEFAULT_SCOPE)
            for status in ("active", "never_seen")
        }
        assert int(agents["active"]) + int(agents["never_seen"]) == 2, agents
        assert int(agents["active"]) >= 1, agents
        # The agent got the config from its reconciliation at start (GET /config/agent) or, when
        # it started before the config existed, from its watch: counted like any request.
        agent_reads = r'controller_requests_total\{endpoint="/config/(agent|version)".*status="200"'
        assert re.search(agent_reads, metrics)
        assert re.search(r'controller_requests_total\{endpoint="/login".*status="401"', metrics)
        assert "worker_config_version 1.0" in requests.get(f"{worker}/metrics", timeout=5).text
    finally:
        code = stack.stop(signal.SIGINT, timeout=60)
    output = stack.log_path.read_text()
    assert code == 0, output
    assert not any(pid_alive(pid) for pid in child_pids(output).values()), output

    credentials = json.loads((var_dir / "agent" / "credentials.json").read_text())
    secrets_seen += [
        credentials["agent_token"],
        (var_dir / "internal_key").read_text().strip(),
        (var_dir / "secret_key").read_text().strip(),
    ]
    for secret in secrets_seen:
        assert secret not in output, "a secret reached the stack's output"
    # LOG_FORMAT=json: every line the processes log is a JSON object.
    logged = [line for line in output.splitlines() if line.startswith("{")]
    loggers = {json.loads(line)["logger"] for line in logged}
    assert {"gunicorn.error", "uvicorn.access", "agent"} <= loggers, loggers

    # Second run: same database, same agent credentials, no new registration.
    stack, controller, worker = start_stack(var_dir)
    try:
        wait_until(
            lambda: requests.get(f"{worker}/hit", timeout=5).content == UPSTREAM_BODY,
            timeout=30,
            message="/hit after a restart",
        )
        assert login(controller).status_code == 200
        output = stack.output()
        assert "Issued a registration token" not in output
        assert "already exists" in output
        assert "using stored credentials" in output
    finally:
        code = stack.stop(signal.SIGINT, timeout=60)
    assert code == 0, stack.log_path.read_text()


def test_a_taken_port_is_named_in_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = Process(
            manage(
                "run_stack",
                "--controller-bind",
                f"127.0.0.1:{port}",
                "--worker-bind",
                f"127.0.0.1:{free_port()}",
            ),
            stack_env(tmp_path / "var"),
            "stack",
        )
        code = process.popen.wait(60)
        process.stop()
        output = process.log_path.read_text()
    assert code == 2, output
    # Word for word what the quickstart page quotes, for its example port.
    page = " ".join((ROOT / "docs" / "quickstart.md").read_text().split())
    quoted = re.search(r"`(port 8080 on 127\.0\.0\.1 is already in use[^`]*)`", page)[1]
    assert quoted.replace("8080", str(port)) in " ".join(output.split()), output


@pytest.mark.timeout(180)
def test_a_child_that_dies_is_reported_and_the_stack_stops(tmp_path):
    stack, _, worker = start_stack(tmp_path / "var")
    try:
        pids = child_pids(stack.output())
        psutil_kill(pids["worker"])
        wait_until(lambda: not stack.alive(), timeout=60, message="the stack stops")
    finally:
        stack.stop()
    output = stack.log_path.read_text()
    assert stack.popen.returncode == 1, output
    assert re.search(r"worker \(pid \d+\) exited with code", output), output
    assert not any(pid_alive(pid) for pid in pids.values()), output


def psutil_kill(pid: int) -> None:
    import os

    os.kill(pid, signal.SIGKILL)
