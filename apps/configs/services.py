"""Changing and reading the configuration: every writer (API, admin, shell) goes through here."""

import logging
from functools import partial

from django.core.cache import cache
from django.db import IntegrityError, transaction

from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from apps.changes.models import ChangeRequest
from apps.configs import notifications
from apps.configs.errors import BaseVersionGone, NoConfigYet, UnknownVersion
from apps.configs.models import ConfigVersion
from protocol.config import ConfigState
from protocol.rules import check_config_url, check_pooling_interval

logger = logging.getLogger(__name__)

CURRENT_STATE_KEY = "config:current"
# A safety net only: announce_config refreshes the key on every change. The timeout bounds how
# long a value written while Redis was flapping could outlive a change whose refresh was lost.
CURRENT_STATE_TIMEOUT = 60
# Concurrent first creations race on the unique version; the loser retries once the winner
# committed. Later writers queue on a row lock and do not need the retry.
PUBLISH_ATTEMPTS = 5


def get_current_config() -> ConfigVersion | None:
    return ConfigVersion.objects.select_related("created_by").order_by("-version").first()


def state_of(config: ConfigVersion | None) -> ConfigState:
    """What an agent needs of the current config: the version and its whole content, so that a
    watch answer can carry it and no second request is needed. Version 0 when there is none."""
    if config is None:
        return ConfigState(version=0, pooling_interval=None, config_url=None, uuid=None)
    return ConfigState(
        version=config.version,
        pooling_interval=config.pooling_interval,
        config_url=config.config_url,
        uuid=str(config.uuid),
    )


def get_current_state() -> ConfigState:
    """The current version and content, from the cache when warm, else from the database."""
    state = cache.get(CURRENT_STATE_KEY)
    # A controller of an older release keeps only the version and the interval there: such an
    # entry is read again from the database rather than answered without its content.
    if state is not None and "uuid" in state:
        return state
    state = state_of(get_current_config())
    # add, not set: a change committed since our read has already stored a newer state.
    cache.add(CURRENT_STATE_KEY, state, timeout=CURRENT_STATE_TIMEOUT)
    return state


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak or strong) or is `*`."""
    if not header:
        return False
    candidates = {item.strip().removeprefix("W/") for item in header.split(",")}
    return etag in candidates or "*" in candidates


def read_for_agent(if_none_match: str | None) -> tuple[int, str, bool]:
    """The decision behind GET /config/agent: (current version, its ETag, whether the agent's
    If-None-Match already names it, for a 304). Raises NoConfigYet before the first config."""
    version = get_current_state()["version"]
    if version == 0:
        raise NoConfigYet()
    etag = f'"{version}"'
    return version, etag, etag_matches(if_none_match, etag)


def announce_config(config: ConfigVersion) -> None:
    """Runs after the commit: refresh the cached state and wake everyone watching."""
    state = state_of(config)
    cache.set(CURRENT_STATE_KEY, state, timeout=CURRENT_STATE_TIMEOUT)
    notifications.publish(state)
    logger.info(
        "config version %s published: %s every %ss",
        config.version,
        config.config_url,
        config.pooling_interval,
    )


def _lock_newest() -> ConfigVersion | None:
    # Every writer locks the oldest version, which is never changed, so writers queue on one
    # row; the newest is then read afresh and sees whatever the previous writer committed.
    if ConfigVersion.objects.select_for_update().order_by("version").first() is None:
        return None
    return ConfigVersion.objects.order_by("-version").first()


def lock_newest() -> ConfigVersion | None:
    """The newest version, with the writers' lock held until the transaction ends: for a
    service that must decide against the current version before a publish can change it."""
    return _lock_newest()


def content_of(config: ConfigVersion | None) -> dict | None:
    """What the audit log keeps as a config's before or after."""
    if config is None:
        return None
    return {
        "version": config.version,
        "config_url": config.config_url,
        "pooling_interval": config.pooling_interval,
    }


def publish_config(
    *,
    config_url: str | None = None,
    pooling_interval: int | None = None,
    actor=None,
    source_ip: str | None = None,
    rolled_back_from: int | None = None,
    audit_action: str = AuditEntry.CONFIG_CREATED,
    base_version: int | None = None,
    change_request=None,
    audit_detail: dict | None = None,
) -> tuple[ConfigVersion, bool]:
    """Make the given content current. Returns (config, created); identical content is a no-op,
    and so is not audited. A field left as None keeps the current value: the merge happens under
    the lock, so two admins changing different fields at once both keep their change.

    `base_version`, when given, must still be the newest version (checked under the lock), else
    BaseVersionGone is raised and nothing is stored. Every pending change request based on an
    older version becomes stale, but `change_request`, the one being published, whose author
    is the new version's creator. `audit_detail` adds to the audit entry's detail."""
    if config_url is not None:
        config_url = check_config_url(config_url)
    if pooling_interval is not None:
        pooling_interval = check_pooling_interval(pooling_interval)
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            with transaction.atomic():
                newest = _lock_newest()
                if newest is None and (config_url is None or pooling_interval is None):
                    raise NoConfigYet()
                if base_version is not None and base_version != (newest.version if newest else 0):
                    raise BaseVersionGone(newest.version if newest else 0)
                url = newest.config_url if config_url is None else config_url
                interval = newest.pooling_interval if pooling_interval is None else pooling_interval
                if newest is not None and newest.same_content(url, interval):
                    return newest, False
                config = ConfigVersion.objects.create(
                    version=(newest.version if newest else 0) + 1,
                    config_url=url,
                    pooling_interval=interval,
                    created_by=change_request.author if change_request else actor,
                    rolled_back_from=rolled_back_from,
                )
                detail = {"before": content_of(newest), "after": content_of(config)}
                made_stale = ChangeRequest.objects.make_stale(config.version, keep=change_request)
                if made_stale:
                    detail["made_stale"] = made_stale
                record_event(
                    audit_action,
                    actor=actor,
                    source_ip=source_ip,
                    target=f"config v{config.version}",
                    detail={**detail, **(audit_detail or {})},
                )
                transaction.on_commit(partial(announce_config, config))
                return config, True
        except IntegrityError:
            if attempt == PUBLISH_ATTEMPTS:
                raise
            logger.info("version race on attempt %s, retrying", attempt)
    raise AssertionError("unreachable")


def update_config(
    *, actor=None, source_ip: str | None = None, **changes
) -> tuple[ConfigVersion, bool]:
    """Change some fields of the current config; a field left out keeps its value."""
    if not ConfigVersion.objects.exists():
        raise NoConfigYet()
    return publish_config(
        config_url=changes.get("config_url"),
        pooling_interval=changes.get("pooling_interval"),
        actor=actor,
        source_ip=source_ip,
        audit_action=AuditEntry.CONFIG_UPDATED,
    )


def rollback_config(
    *, version: int, actor=None, source_ip: str | None = None
) -> tuple[ConfigVersion, bool]:
    """Make a new version whose content is that of `version`."""
    target = ConfigVersion.objects.filter(version=version).first()
    if target is None:
        raise UnknownVersion(version)
    return publish_config(
        config_url=target.config_url,
        pooling_interval=target.pooling_interval,
        actor=actor,
        source_ip=source_ip,
        rolled_back_from=version,
        audit_action=AuditEntry.CONFIG_ROLLED_BACK,
    )


def changed_fields(config: ConfigVersion, previous: ConfigVersion | None) -> list[str]:
    if previous is None:
        return ["config_url", "pooling_interval"]
    return [
        field
        for field in ("config_url", "pooling_interval")
        if getattr(config, field) != getattr(previous, field)
    ]
