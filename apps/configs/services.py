"""Changing and reading the configuration: every writer (API, admin, shell) goes through here."""

import logging
from functools import partial

from django.core.cache import cache
from django.db import IntegrityError, transaction

from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from apps.configs.errors import NoConfigYet, StaleVersion, UnknownVersion
from apps.configs.models import ConfigVersion
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


def state_of(config: ConfigVersion | None) -> dict:
    """What the agents are answered: the newest version and interval, the rollout's revision
    (so that a newer answer for the same version is told from an older one), and, while a
    rollout splits the fleet, what decides who still gets the previous version (see
    apps.rollouts.services.target_of)."""
    from apps.rollouts.models import Rollout
    from apps.rollouts.services import split_of

    if config is None:
        return {"version": 0, "pooling_interval": None, "revision": 0, "rollout": None}
    rollout = Rollout.objects.filter(version=config.version).first()
    split = None
    if rollout is not None and rollout.state in Rollout.SPLIT_STATES:
        previous_interval = (
            ConfigVersion.objects.filter(version=rollout.previous_version)
            .values_list("pooling_interval", flat=True)
            .first()
        )
        split = split_of(rollout, previous_interval)
    return {
        "version": config.version,
        "pooling_interval": config.pooling_interval,
        "revision": rollout.revision if rollout is not None else 0,
        "rollout": split,
    }


def get_current_state() -> dict:
    """The served state (see state_of), from the cache when warm, else from the database."""
    state = cache.get(CURRENT_STATE_KEY)
    if state is not None:
        return state
    state = state_of(get_current_config())
    # add, not set: a change committed since our read has already stored a newer state.
    cache.add(CURRENT_STATE_KEY, state, timeout=CURRENT_STATE_TIMEOUT)
    return state


def announce_current_state() -> dict:
    """Runs after a commit that changed what some agent is answered (a new version, a rollout's
    wave): refresh the cached state and wake everyone watching."""
    from apps.configs import notifications

    state = state_of(get_current_config())
    cache.set(CURRENT_STATE_KEY, state, timeout=CURRENT_STATE_TIMEOUT)
    notifications.publish(state)
    return state


def announce_config(config: ConfigVersion) -> None:
    """Runs after the commit of a new version."""
    announce_current_state()
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
    if_match: str | None = None,
    rollout: dict | None = None,
    reason: str = "",
    expect_rollout: int | None = None,
) -> tuple[ConfigVersion, bool]:
    """Make the given content current. Returns (config, created); identical content is a no-op,
    and so is not audited. A field left as None keeps the current value: the merge happens under
    the lock, so two admins changing different fields at once both keep their change.

    `if_match` is the client's If-Match header: when it names a version other than the newest
    (checked under the lock), nothing is stored and StaleVersion says which version is newest.
    `rollout` (a checked plan) gives the new version to the agents in waves instead of to all
    at once. While a rollout is rolling or paused, only a rollback goes through, and it aborts
    the rollout (`reason` is the abort's, `expect_rollout` the version an abort expects to be
    rolling out)."""
    from apps.rollouts import services as rollouts

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
                current_version = newest.version if newest else 0
                if if_match is not None and not if_match_allows(if_match, current_version):
                    raise StaleVersion(current_version)
                if rollout is not None and newest is None:
                    raise rollouts.NothingToRollOutFrom()
                rollouts.guard_publish(
                    newest,
                    rolling_back=rolled_back_from is not None,
                    actor=actor,
                    source_ip=source_ip,
                    reason=reason,
                    expect_rollout=expect_rollout,
                )
                url = newest.config_url if config_url is None else config_url
                interval = newest.pooling_interval if pooling_interval is None else pooling_interval
                if newest is not None and newest.same_content(url, interval):
                    return newest, False
                config = ConfigVersion.objects.create(
                    version=(newest.version if newest else 0) + 1,
                    config_url=url,
                    pooling_interval=interval,
                    created_by=actor,
                    rolled_back_from=rolled_back_from,
                )
                record_event(
                    audit_action,
                    actor=actor,
                    source_ip=source_ip,
                    target=f"config v{config.version}",
                    detail={"before": content_of(newest), "after": content_of(config)},
                )
                if rollout is not None:
                    rollouts.start_rollout(
                        config, newest, rollout, actor=actor, source_ip=source_ip
                    )
                transaction.on_commit(partial(announce_config, config))
                return config, True
        except IntegrityError:
            if attempt == PUBLISH_ATTEMPTS:
                raise
            logger.info("version race on attempt %s, retrying", attempt)
    raise AssertionError("unreachable")


def if_match_allows(header: str, version: int) -> bool:
    """Whether an If-Match header names `version` ("7", a list of them, or * for any)."""
    candidates = {item.strip() for item in header.split(",")}
    if "*" in candidates:
        return version > 0
    return f'"{version}"' in candidates


def update_config(
    *,
    actor=None,
    source_ip: str | None = None,
    if_match: str | None = None,
    rollout: dict | None = None,
    **changes,
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
        if_match=if_match,
        rollout=rollout,
    )


def rollback_config(
    *,
    version: int,
    actor=None,
    source_ip: str | None = None,
    reason: str = "",
    expect_rollout: int | None = None,
) -> tuple[ConfigVersion, bool]:
    """Make a new version whose content is that of `version`, for every agent at once; a
    rollout still splitting the fleet is aborted."""
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
        reason=reason,
        expect_rollout=expect_rollout,
    )


def changed_fields(config: ConfigVersion, previous: ConfigVersion | None) -> list[str]:
    if previous is None:
        return ["config_url", "pooling_interval"]
    return [
        field
        for field in ("config_url", "pooling_interval")
        if getattr(config, field) != getattr(previous, field)
    ]
