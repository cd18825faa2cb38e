"""The agent's small parts: backoff, the state dir, the command's arguments."""

import json
import stat
import subprocess
import sys

import pytest

from agent import command as agent_command
from agent.backoff import Backoff
from agent.state import StateDir
from tests.support.processes import ROOT


def test_backoff_delays_double_up_to_the_cap_and_reset_on_success():
    backoff = Backoff(base=1, cap=10, rand=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    backoff.reset()
    assert backoff.next_delay() == 1


def test_backoff_uses_full_jitter_between_zero_and_the_ceiling():
    draws = iter([0.0, 0.5, 0.25])
    backoff = Backoff(base=2, cap=60, rand=lambda: next(draws))
    assert [backoff.next_delay() for _ in range(3)] == [0.0, 2.0, 2.0]


def test_backoff_survives_a_very_long_outage():
    backoff = Backoff(base=1, cap=60, rand=lambda: 1.0)
    backoff.failures = 10_000
    assert backoff.next_delay() == 60


def test_state_files_are_written_atomically_with_mode_0600(tmp_path):
    state = StateDir(tmp_path / "state")
    state.ensure()
    config = {
        "config_url": "http://a.example/",
        "pooling_interval": 30,
        "version": 2,
        "uuid": "6f1c1c4e-7a55-4d8b-9d8e-0c1b7b2a9e11",
    }
    state.save_config({**config, "created_at": "ignored"})
    state.save_credentials({"agent_id": "a", "agent_token": "t"})
    for path in (state.config_path, state.credentials_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(state.config_path.read_text()) == config
    assert state.load_config() == config
    assert list(state.path.glob("*.tmp")) == []


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        '{"version": 3}',
        '{"config_url": "http://a/", "pooling_interval": 30, "version": "3", "uuid": "u"}',
        "",
    ],
)
def test_a_damaged_config_cache_is_reported_and_ignored(tmp_path, caplog, content):
    state = StateDir(tmp_path)
    state.config_path.write_text(content)
    assert state.load_config() is None
    assert "ignoring cached config" in caplog.text


def test_damaged_credentials_are_reported_and_ignored(tmp_path, caplog):
    state = StateDir(tmp_path)
    state.credentials_path.write_text('{"agent_id": 1}')
    assert state.load_credentials() is None
    assert "ignoring agent credentials" in caplog.text


def test_run_agent_without_internal_key_exits_2(monkeypatch, capsys):
    monkeypatch.delenv("INTERNAL_KEY", raising=False)
    monkeypatch.delenv("CONFIG_FILE", raising=False)
    status = agent_command.main(
        ["--controller-url", "http://127.0.0.1:1", "--worker-url", "http://x"]
    )
    assert status == 2
    assert "INTERNAL_KEY is required" in capsys.readouterr().err


def test_run_agent_without_a_controller_url_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("INTERNAL_KEY", "k")
    monkeypatch.delenv("CONTROLLER_URL", raising=False)
    monkeypatch.delenv("CONFIG_FILE", raising=False)
    assert agent_command.main(["--worker-url", "http://127.0.0.1:1"]) == 2
    assert capsys.readouterr().err == "error: Give --controller-url or set CONTROLLER_URL.\n"


def test_run_agent_refuses_a_metrics_port_out_of_range(monkeypatch, capsys):
    monkeypatch.setenv("INTERNAL_KEY", "k")
    monkeypatch.delenv("CONFIG_FILE", raising=False)
    argv = ["--controller-url", "http://127.0.0.1:1", "--worker-url", "http://127.0.0.1:2"]
    assert agent_command.main([*argv, "--metrics-bind", "127.0.0.1:0"]) == 2
    assert "--metrics-bind must be HOST:PORT with a port from 1 to 65535" in capsys.readouterr().err


def test_the_agent_package_loads_without_django():
    # The agent talks HTTP only: importing it must not pull in Django or the controller's models.
    code = (
        "import sys, agent.daemon, agent.client, agent.state, agent.backoff, agent.command; "
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('django', 'apps')]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
