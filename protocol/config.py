"""A configuration as the agent fetches, keeps and pushes it, and the state a watch answers with.

The agent checks what the controller sent and what it reads back from its cache, and the
worker checks every push, with the one `check_config` below, so all three agree on what a valid
configuration is.
"""

from typing import TypedDict, cast

from protocol.rules import (
    InvalidConfig,
    check_config_url,
    check_pooling_interval,
    check_uuid,
    check_version,
)


class ConfigState(TypedDict):
    """What GET /config/version answers: the current version (0 before the first config) with
    its content, so that an agent needs no second request (each None before the first config;
    config_url and uuid also None from a controller of an older release)."""

    version: int
    pooling_interval: int | None
    config_url: str | None
    uuid: str | None


class Config(TypedDict):
    """The four fields the controller serves to agents and the agent pushes to workers."""

    config_url: str
    pooling_interval: int
    version: int
    uuid: str


FIELD_CHECKS = (
    ("config_url", check_config_url),
    ("pooling_interval", check_pooling_interval),
    ("version", check_version),
    ("uuid", check_uuid),
)
CONFIG_FIELDS = tuple(field for field, _ in FIELD_CHECKS)


class InvalidFields(ValueError):
    """One or more fields break a rule; `errors` maps each field to its messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(", ".join(sorted(errors)))
        self.errors = errors


def check_config(data: dict) -> Config:
    """The four fields of `data`, checked (and the UUID in its canonical form); raise
    InvalidFields naming every field that is missing or breaks its rule."""
    values: dict[str, object] = {}
    errors: dict[str, list[str]] = {}
    for field, check in FIELD_CHECKS:
        if field not in data:
            errors[field] = ["This field is required."]
            continue
        try:
            values[field] = check(data[field])
        except InvalidConfig as exc:
            errors.setdefault(exc.field, []).append(exc.message)
    if errors:
        raise InvalidFields(errors)
    # Every field is there and checked: the TypedDict's promise holds.
    return cast(Config, values)


def valid_config(data: object) -> bool:
    """Whether `data` is a configuration a worker accepts."""
    if not isinstance(data, dict):
        return False
    try:
        check_config(data)
    except InvalidFields:
        return False
    return True
