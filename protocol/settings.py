"""Reading settings: the environment, then the settings file, then the default.

Every process reads its settings through one SettingsReader: the controller in
controller_site/settings.py, the worker and the agent in their own settings.py, which need no
Django. Each value's source is kept for `manage.py show_settings`.
"""

import builtins
import os
from collections.abc import Callable
from typing import TypeVar, overload

from protocol.config_file import ConfigFile, convert
from protocol.labels import InvalidLabels, check_labels, parse_label_pairs

Settings = TypeVar("Settings")


class SettingsError(ValueError):
    """A setting with a value it cannot take; the message names the variable."""


class SettingsReader:
    """Typed reads of one process's settings; `sources` maps each name read to (source, value),
    source being env, file or default."""

    # The readers are named after the types they read, so inside the class the types themselves
    # are spelled builtins.str and so on.

    def __init__(self, file: ConfigFile, error: type[Exception] = SettingsError) -> None:
        self.file = file
        self.error = error
        self.sources: dict[str, tuple[str, object]] = {}

    def _lookup(self, name: str, kind: str, default):
        value = os.environ.get(name)
        if value is not None and value.strip() != "":
            return "env", value.strip()
        if name in self.file.values:
            return "file", convert(self.file, name, kind)
        return "default", default

    def record(self, name: str, source: str, value):
        """Note a value the process worked out itself (from other settings) and its source."""
        self.sources[name] = (source, value)
        return value

    @overload
    def str(
        self, name: builtins.str, default: builtins.str, kind: builtins.str = "str"
    ) -> builtins.str: ...

    @overload
    def str(
        self, name: builtins.str, default: None = None, kind: builtins.str = "str"
    ) -> builtins.str | None: ...

    def str(
        self, name: builtins.str, default: builtins.str | None = None, kind: builtins.str = "str"
    ) -> builtins.str | None:
        """The value, or `default`; a reader given a default never answers None."""
        source, value = self._lookup(name, kind, default)
        return self.record(name, source, value)

    def labels(self, name: builtins.str) -> dict[builtins.str, builtins.str]:
        """Agent labels: `ring=canary,zone=a` in the environment, a mapping in the file."""
        source, value = self._lookup(name, "labels", {})
        try:
            if isinstance(value, str):
                value = parse_label_pairs([pair for pair in value.split(",") if pair.strip()])
            else:
                value = check_labels(value)
        except InvalidLabels as exc:
            if source == "file":
                raise self.file.error(name, str(exc)) from None
            raise self.error(f"{name}: {exc}") from None
        return self.record(name, source, value)

    def bool(self, name: builtins.str, default: builtins.bool = False) -> builtins.bool:
        source, value = self._lookup(name, "bool", default)
        if source == "env":
            lowered = value.lower()
            if lowered in ("1", "true", "yes", "on"):
                value = True
            elif lowered in ("0", "false", "no", "off"):
                value = False
            else:
                raise self.error(f"{name} must be a boolean (1/0, true/false, on/off): {value!r}")
        return self.record(name, source, value)

    def int(
        self, name: builtins.str, default: builtins.int, minimum: builtins.int | None = None
    ) -> builtins.int:
        source, value = self._lookup(name, "int", default)
        if source == "env":
            try:
                value = int(value)
            except ValueError:
                raise self.error(f"{name} must be a whole number: {value!r}") from None
        if minimum is not None and value < minimum:
            if source == "file":
                raise self.file.error(name, f"must be at least {minimum}, got {value}")
            raise self.error(f"{name} must be at least {minimum}: {value!r}")
        return self.record(name, source, value)

    def float(
        self, name: builtins.str, default: builtins.float, positive: builtins.bool = False
    ) -> builtins.float:
        source, value = self._lookup(name, "float", default)
        if source == "env":
            try:
                value = float(value)
            except ValueError:
                raise self.error(f"{name} must be a number: {value!r}") from None
        if positive and not value > 0:
            if source == "file":
                raise self.file.error(name, f"must be positive, got {value}")
            raise self.error(f"{name} must be positive: {value}")
        return self.record(name, source, value)

    def list(
        self, name: builtins.str, default: builtins.list[builtins.str], kind: builtins.str = "list"
    ) -> builtins.list[builtins.str]:
        source, value = self._lookup(name, kind, default)
        if source == "env":
            value = [item.strip() for item in value.split(",") if item.strip()]
        return self.record(name, source, value)


def read_role_settings(
    role: str, read_settings: Callable[["SettingsReader"], Settings], config_path: str | None = None
) -> tuple[Settings, dict[str, tuple[str, object]]]:
    """The worker's or the agent's settings, by its own `read_settings`, from the environment
    and its settings file (`config_path`, else CONFIG_FILE), and where each came from. Raises
    ConfigFileError or SettingsError, also for a key in the file that no setting reads."""
    file = ConfigFile(config_path or os.environ.get("CONFIG_FILE") or None, role)
    reader = SettingsReader(file)
    settings = read_settings(reader)
    file.check_unknown(set(reader.sources))
    return settings, reader.sources
