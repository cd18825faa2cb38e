"""What the agent keeps on disk: its credentials and the last config a worker accepted.

Both files live in the state dir, are written atomically (temp file, fsync, os.replace) with mode
0600, and are read back on start. A damaged file is reported and treated as missing: the agent
must keep running on whatever else it has.
"""

import json
import logging
import os
import tempfile
from pathlib import Path

from protocol.config import CONFIG_FIELDS, valid_config

logger = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials.json"
CONFIG_FILE = "config.json"


class CorruptStateFile(Exception):
    """A state file exists but does not hold what the agent wrote there."""


def write_json_atomically(path: Path, data: dict) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    # The rename is only durable once the directory entry is on disk too.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_json(path: Path) -> dict | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CorruptStateFile(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptStateFile(f"{path} does not hold a JSON object")
    return data


class StateDir:
    """The agent's directory: credentials.json and config.json."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def credentials_path(self) -> Path:
        return self.path / CREDENTIALS_FILE

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load_credentials(self) -> dict | None:
        """{"agent_id", "agent_token", ...} or None when absent or unusable."""
        try:
            data = _read_json(self.credentials_path)
        except CorruptStateFile as exc:
            logger.error("ignoring agent credentials: %s", exc)
            return None
        if data is None:
            return None
        if not isinstance(data.get("agent_id"), str) or not isinstance(
            data.get("agent_token"), str
        ):
            logger.error(
                "ignoring agent credentials: %s lacks agent_id or agent_token",
                self.credentials_path,
            )
            return None
        return data

    def save_credentials(self, credentials: dict) -> None:
        write_json_atomically(self.credentials_path, credentials)

    def load_config(self) -> dict | None:
        """The cached config, or None when there is none or it is damaged (which is logged)."""
        try:
            data = _read_json(self.config_path)
        except CorruptStateFile as exc:
            logger.error("ignoring cached config: %s", exc)
            return None
        if data is None:
            return None
        if not valid_config(data):
            logger.error("ignoring cached config: %s lacks a valid config", self.config_path)
            return None
        return {field: data[field] for field in CONFIG_FIELDS}

    def save_config(self, config: dict) -> None:
        write_json_atomically(self.config_path, {field: config[field] for field in CONFIG_FIELDS})
