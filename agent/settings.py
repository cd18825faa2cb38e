"""The agent's settings, read without Django: the agent talks HTTP only, and needs no database,
cache or secret key.

`manage.py run_agent` reads them here (flag, then environment, then the settings file, then the
default); `show_settings` with CONFIG_ROLE=agent prints them.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from protocol.logs import read_log_settings
from protocol.settings import SettingsReader

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class AgentSettings:
    internal_key: str | None
    controller_url: str | None
    worker_urls: list[str]
    registration_token: str | None
    state_dir: str
    default_interval: float
    backoff_cap: float
    worker_check_seconds: float
    heartbeat_seconds: float
    connect_timeout: float
    read_timeout: float
    metrics_bind: str | None
    labels: dict[str, str]
    log_level: str
    log_format: str


def default_state_dir() -> Path:
    return Path(os.environ.get("VAR_DIR") or ROOT / "var") / "agent"


def read_settings(reader: SettingsReader) -> AgentSettings:
    log_level, log_format = read_log_settings(reader)
    return AgentSettings(
        # Pushes to the workers are signed with this secret, which they share.
        internal_key=reader.str("INTERNAL_KEY"),
        controller_url=reader.str("CONTROLLER_URL", kind="url"),
        worker_urls=reader.list("WORKER_URL", [], kind="urls"),
        registration_token=reader.str("REGISTRATION_TOKEN"),
        state_dir=reader.str("AGENT_STATE_DIR", str(default_state_dir())),
        # Check period before the controller has a config (afterwards its pooling_interval).
        default_interval=reader.float("AGENT_DEFAULT_INTERVAL", 10.0),
        # Upper bound of the retry delay for an unreachable controller or worker.
        backoff_cap=reader.float("AGENT_BACKOFF_CAP", 60.0),
        # While a watch is held, the workers are still checked this often, so one that
        # restarted empty is filled again within seconds rather than when the watch ends.
        worker_check_seconds=reader.float("AGENT_WORKER_CHECK_SECONDS", 5.0),
        # How often the agent reports to the controller: what it applied, its workers' state and
        # their hits per version, on which a rollout is halted. The first hits of a new version
        # go sooner.
        heartbeat_seconds=reader.float("AGENT_HEARTBEAT_SECONDS", 10.0),
        connect_timeout=reader.float("AGENT_CONNECT_TIMEOUT", 3.0),
        read_timeout=reader.float("AGENT_READ_TIMEOUT", 10.0),
        # HOST:PORT for Prometheus metrics; off by default, as the seed's agent has no
        # public endpoint.
        metrics_bind=reader.str("AGENT_METRICS_BIND"),
        # Sent at registration and with every heartbeat; rollouts pick their canaries by them.
        labels=reader.labels("AGENT_LABELS"),
        log_level=log_level,
        log_format=log_format,
    )
