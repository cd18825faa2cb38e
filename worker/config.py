"""The configuration a worker holds: the checks on a push and the store that keeps the newest one.

The checks are the agent's and the controller's own (protocol/), so a push the controller would
refuse is refused here too.
"""

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from protocol.config import check_config


class MalformedPush(ValueError):
    """The push body is not a JSON object."""


class StaleVersion(Exception):
    """A push older than the configuration already held: applying it would roll the worker back."""

    def __init__(self, held: int, offered: int) -> None:
        super().__init__(f"holds version {held}, refused older version {offered}")
        self.held = held
        self.offered = offered


@dataclass(frozen=True)
class PushedConfig:
    """A validated push: the four fields the agent sends."""

    config_url: str
    pooling_interval: int
    version: int
    uuid: str


def mask_query(url: str) -> str:
    """`url` with every query value replaced by ***: the names stay, to show the shape."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    masked = "&".join(
        f"{item.partition('=')[0]}=***" if item else item for item in parts.query.split("&")
    )
    return urlunsplit(parts._replace(query=masked))


@dataclass(frozen=True)
class HeldConfig:
    """The configuration in force, with the time it arrived."""

    config_url: str
    pooling_interval: int
    version: int
    uuid: str
    received_at: datetime

    def as_dict(self) -> dict:
        return {
            # GET /config answers anyone: the query may carry a token, so its values are masked.
            "config_url": mask_query(self.config_url),
            "pooling_interval": self.pooling_interval,
            "version": self.version,
            "uuid": self.uuid,
            "received_at": self.received_at.isoformat().replace("+00:00", "Z"),
        }


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_push(body: bytes) -> PushedConfig:
    """Decode and check a push body; raise MalformedPush or InvalidFields."""
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8, bad JSON and integers too long to convert;
        # RecursionError a deeply nested document.
        raise MalformedPush("Body must be valid JSON.") from None
    if not isinstance(data, dict):
        raise MalformedPush("Body must be a JSON object.")
    return PushedConfig(**check_config(data))


class ConfigStore:
    """The one configuration in force, replaced only by a newer version.

    Writers compare and replace under a lock so two concurrent pushes cannot both win; readers take
    the current reference without the lock, which is safe because HeldConfig is immutable and a
    reference read is atomic.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: HeldConfig | None = None

    @property
    def current(self) -> HeldConfig | None:
        return self._held

    def apply(self, pushed: PushedConfig) -> tuple[bool, HeldConfig, HeldConfig | None]:
        """Apply `pushed` if it is newer: (applied, config now held, config held before).

        The version already held is a no-op; an older one raises StaleVersion.
        """
        with self._lock:
            before = self._held
            if before is not None:
                if pushed.version < before.version:
                    raise StaleVersion(before.version, pushed.version)
                if pushed.version == before.version:
                    return False, before, before
            self._held = HeldConfig(
                config_url=pushed.config_url,
                pooling_interval=pushed.pooling_interval,
                version=pushed.version,
                uuid=pushed.uuid,
                received_at=datetime.now(UTC),
            )
            return True, self._held, before
