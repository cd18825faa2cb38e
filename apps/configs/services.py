"""Changing and reading the configuration: every writer (API, admin, shell) goes through here."""

import logging
from functools import partial

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.dispatch import Signal

from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from apps.changes.models import ChangeRequest
from apps.configs import notifications
from apps.configs.errors import BaseVersionGone, NoConfigYet, StaleVersion, UnknownVersion
from apps.configs.models import ConfigVersion
from apps.rollouts.models import Rollout
from apps.rollouts.targets import target_of
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

# Sent by publish_config under the writers' lock, before a version is made, with `newest`,
# `rolling_back`, `rollout` (a plan or None), `actor`, `source_ip`, `reason` and
# `expect_rollout`: a receiver refuses the publish by raising. The rollouts app refuses a publish
# while a rollout is rolling or paused, and aborts it on a rollback.
publishing = Signal()
# Sent in the same transaction once a version is made, with `config`, `previous`, `rollout`,
# `actor` and `source_ip`: the rollouts app starts the rollout of a plan.
published = Signal()


def get_current_config() -> ConfigVersion | None:
    return ConfigVersion.objects.select_related("created_by").order_by("-version").first()


def answer_of(config: ConfigVersion | None) -> ConfigState:
    """What an agent needs of a config: the version and its whole content, so that a watch
    answer can carry it and no second request is needed. Version 0 when there is none."""
    if config is None:
        return ConfigState(version=0, pooling_interval=None, config_url=None, uuid=None)
    return ConfigState(
        version=config.version,
        pooling_interval=config.pooling_interval,
        config_url=config.config_url,
        uuid=str(config.uuid),
    )


def state_of(config: ConfigVersion | None) -> dict:
    """The served state: the newest version's answer, the revision of its rollout (so that a
    newer state of the same version is told from an older one), and, while a rollout splits the
    fleet, what decides who still gets the previous version (apps.rollouts.targets)."""
    state = {**answer_of(config), "revision": 0, "rollout": None}
    rollout = Rollout.objects.filter(version=config.version).first() if config else None
    if rollout is not None:
        state["revision"] = rollout.revision
        if rollout.state in Rollout.SPLIT_STATES:
            previous = ConfigVersion.objects.filter(version=rollout.previous_version).first()
            state["rollout"] = rollout.split(answer_of(previous))
    return state


def get_current_state() -> dict:
    """The served state (state_of), from the cache when warm, else from the database."""
    state = cache.get(CURRENT_STATE_KEY)
    # A controller of an older release keeps less there: such an entry is read again from the
    # database rather than answered without its content or its rollout.
    if isinstance(state, dict) and "uuid" in state and "revision" in state:
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


def read_for_agent(if_none_match: str | None, agent) -> tuple[int, str, bool]:
    """The decision behind GET /config/agent: (the agent's target version, its ETag, whether the
    agent's If-None-Match already names it, for a 304). Raises NoConfigYet before the first
    config."""
    version = target_of(get_current_state(), agent.pk, agent.labels)["version"]
    if version == 0:
        raise NoConfigYet()
    etag = f'"{version}"'
    return version, etag, etag_matches(if_none_match, etag)


def announce_current_state() -> dict:
    """Runs after a commit that changed what some agent is answered (a new version, a rollout's
    wave): refresh the cached state and wake everyone watching."""
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
    if_match: str | None = None,
    rollout: dict | None = None,
    reason: str = "",
    expect_rollout: int | None = None,
    halt: dict | None = None,
) -> tuple[ConfigVersion, bool]:
    """Make the given content current. Returns (config, created); identical content is a no-op,
    and so is not audited. A field left as None keeps the current value: the merge happens under
    the lock, so two admins changing different fields at once both keep their change.

    `base_version`, when given, must still be the newest version (checked under the lock), else
    BaseVersionGone is raised and nothing is stored. Every pending change request based on an
    older version becomes stale, but `change_request`, the one being published, whose author
    is the new version's creator. `audit_detail` adds to the audit entry's detail.

    `if_match` is the client's If-Match header: when it names a version other than the newest
    (checked under the lock), nothing is stored and StaleVersion says which version is newest.
    `rollout` (a checked plan) gives the new version to the agents in waves instead of to all
    at once (see the `publishing` and `published` signals); `reason` and `expect_rollout` are
    those of an abort, which is a rollback, and `halt` (the health gate's numbers) makes it a
    halt."""
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
                if base_version is not None and base_version != current_version:
                    raise BaseVersionGone(current_version)
                if if_match is not None and not if_match_allows(if_match, current_version):
                    raise StaleVersion(current_version)
                publishing.send(
                    sender=ConfigVersion,
                    newest=newest,
                    rolling_back=rolled_back_from is not None,
                    rollout=rollout,
                    actor=actor,
                    source_ip=source_ip,
                    reason=reason,
                    expect_rollout=expect_rollout,
                    halt=halt,
                )
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
                published.send(
                    sender=ConfigVersion,
                    config=config,
                    previous=newest,
                    rollout=rollout,
                    actor=actor,
                    source_ip=source_ip,
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


# Why a publish that skipped approval was allowed to, as its audit entry states it.
ROLLBACK_BYPASS_RULE = (
    "a rollback (or a rollout's abort) restores content that was published before; an "
    "operator may restore it without approval, so that an incident does not wait for approvers"
)
HALT_BYPASS_RULE = (
    "the health gate halted a failing rollout and restored the previous content, which was "
    "published before"
)


def approval_bypass(rule: str) -> dict | None:
    """The audit detail of a publish that skipped approval while approvals are required
    (None while they are not: nothing was skipped)."""
    required = settings.CONFIG_APPROVALS_REQUIRED
    if not required:
        return None
    return {"approval_bypassed": {"approvals_required": required, "rule": rule}}


def rollback_config(
    *,
    version: int,
    actor=None,
    source_ip: str | None = None,
    reason: str = "",
    expect_rollout: int | None = None,
    halt: dict | None = None,
) -> tuple[ConfigVersion, bool]:
    """Make a new version whose content is that of `version`, for every agent at once; a
    rollout still splitting the fleet is aborted (or halted, with `halt`).

    While approvals are required (CONFIG_APPROVALS_REQUIRED), a rollback still publishes at
    once: it puts back content that was published before, and in an incident that must not
    wait for approvers. Its audit entry says so (`approval_bypassed`, with the rule), and the
    change requests' list in the admin shows it."""
    target = ConfigVersion.objects.filter(version=version).first()
    if target is None:
        raise UnknownVersion(version)
    bypass = approval_bypass(ROLLBACK_BYPASS_RULE if actor is not None else HALT_BYPASS_RULE)
    return publish_config(
        audit_detail=bypass,
        config_url=target.config_url,
        pooling_interval=target.pooling_interval,
        actor=actor,
        source_ip=source_ip,
        rolled_back_from=version,
        audit_action=AuditEntry.CONFIG_ROLLED_BACK,
        reason=reason,
        expect_rollout=expect_rollout,
        halt=halt,
    )


def changed_fields(config: ConfigVersion, previous: ConfigVersion | None) -> list[str]:
    if previous is None:
        return ["config_url", "pooling_interval"]
    return [
        field
        for field in ("config_url", "pooling_interval")
        if getattr(config, field) != getattr(previous, field)
    ]
