"""Reading the configuration and telling the agents about it: the current version, the state the
watch serves (with the split of a rollout in progress), the writers' lock, and the announcement
after a commit, each of one scope (an application in an environment), named by its id. Every
write is in apps.configs.actions."""

import logging

from django.core.cache import cache
from django.db.models import OuterRef, QuerySet, Subquery

from apps.configs import notifications
from apps.configs.errors import NoConfigYet
from apps.configs.models import ConfigVersion
from apps.rollouts.models import Rollout
from apps.rollouts.targets import target_of
from protocol.config import ConfigState

logger = logging.getLogger(__name__)

# A safety net only: announce_config refreshes the key on every change. The timeout bounds how
# long a value written while Redis was flapping could outlive a change whose refresh was lost.
CURRENT_STATE_TIMEOUT = 60


def state_key(scope_id: int) -> str:
    """The cache key of a scope's served state."""
    return f"config:current:{scope_id}"


def get_current_config(scope_id: int) -> ConfigVersion | None:
    return (
        ConfigVersion.objects.filter(scope_id=scope_id)
        .select_related("created_by")
        .order_by("-version")
        .first()
    )


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


def whole_state(config: ConfigVersion | None, scope_id: int) -> dict:
    """The served state of a scope whose newest version no rollout splits: everyone gets it."""
    return {**answer_of(config), "revision": 0, "rollout": None, "scope": scope_id}


def state_of(config: ConfigVersion | None, scope_id: int) -> dict:
    """The served state of a scope: the newest version's answer, the revision of its rollout
    (so that a newer state of the same version is told from an older one), and, while a rollout
    splits the fleet, what decides who still gets the previous version (apps.rollouts.targets).
    """
    state = whole_state(config, scope_id)
    rollout = (
        Rollout.objects.filter(scope_id=config.scope_id, version=config.version).first()
        if config
        else None
    )
    if rollout is not None:
        state["revision"] = rollout.revision
        if rollout.state in Rollout.SPLIT_STATES:
            previous = ConfigVersion.objects.filter(
                scope_id=config.scope_id, version=rollout.previous_version
            ).first()
            state["rollout"] = rollout.split(answer_of(previous))
    return state


def get_current_state(scope_id: int) -> dict:
    """A scope's served state (state_of), from the cache when warm, else from the database."""
    key = state_key(scope_id)
    state = cache.get(key)
    # A controller of an older release keeps less there: such an entry is read again from the
    # database rather than answered without its content or its rollout.
    if isinstance(state, dict) and "uuid" in state and state.get("scope") == scope_id:
        return state
    state = state_of(get_current_config(scope_id), scope_id)
    # add, not set: a change committed since our read has already stored a newer state.
    cache.add(key, state, timeout=CURRENT_STATE_TIMEOUT)
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
    version = target_of(get_current_state(agent.scope_id), agent.pk, agent.labels)["version"]
    if version == 0:
        raise NoConfigYet()
    etag = f'"{version}"'
    return version, etag, etag_matches(if_none_match, etag)


def announce_current_state(scope_id: int) -> dict:
    """Runs after a commit that changed what some agent of a scope is answered (a new version, a
    rollout's wave): refresh the scope's cached state and wake everyone watching it."""
    return announce(state_of(get_current_config(scope_id), scope_id))


def announce(state: dict) -> dict:
    cache.set(state_key(state["scope"]), state, timeout=CURRENT_STATE_TIMEOUT)
    notifications.publish(state)
    return state


def announce_config(config: ConfigVersion, *, rollout: bool) -> None:
    """Runs after the commit of a new version. One that goes to everyone at once (no `rollout`)
    is the scope's whole state, so it is announced as it was written rather than read back: two
    queries less on every change. A newer version can be announced first only if it was
    written whole between this commit and this call, and then, as when a read races it, the
    hubs keep the newest state they are told of and CURRENT_STATE_TIMEOUT bounds the cache."""
    if rollout:
        announce_current_state(config.scope_id)
    else:
        announce(whole_state(config, config.scope_id))
    logger.info(
        "config version %s published: %s every %ss",
        config.version,
        config.config_url,
        config.pooling_interval,
    )


def lock_newest(scope_id: int) -> ConfigVersion | None:
    """A scope's newest version, with the scope's writers' lock held until the transaction
    ends: every writer takes it before deciding against the current version, so the writers of
    one scope queue on one row, and those of other scopes do not wait for them."""
    versions = ConfigVersion.objects.filter(scope_id=scope_id)
    # The oldest version is locked, which is never changed; the newest is then read afresh and
    # sees whatever the previous writer committed.
    if versions.select_for_update().order_by("version").first() is None:
        return None
    return versions.order_by("-version").first()


def content_of(config: ConfigVersion | None) -> dict | None:
    """What the audit log keeps as a config's before or after."""
    if config is None:
        return None
    return {
        "version": config.version,
        "config_url": config.config_url,
        "pooling_interval": config.pooling_interval,
    }


def if_match_allows(header: str, version: int) -> bool:
    """Whether an If-Match header names `version` ("7", a list of them, or * for any)."""
    candidates = {item.strip() for item in header.split(",")}
    if "*" in candidates:
        return version > 0
    return f'"{version}"' in candidates


# What a config holds, beside its version: what a change sets, and what versions are compared by.
CONTENT_FIELDS = ("config_url", "pooling_interval")


def changed_fields(config: ConfigVersion, previous: ConfigVersion | None) -> list[str]:
    if previous is None:
        return ["config_url", "pooling_interval"]
    return [field for field in CONTENT_FIELDS if getattr(config, field) != getattr(previous, field)]


def _previous(field: str) -> Subquery:
    return Subquery(
        ConfigVersion.objects.filter(
            scope=OuterRef("scope"), version=OuterRef("version") - 1
        ).values(field)[:1]
    )


def with_previous(versions: QuerySet) -> QuerySet:
    """Versions with the previous version's content of their scope read in the same query, so
    that a list of versions with what each changed costs no query per row (previous_of)."""
    return versions.annotate(
        previous_url=_previous("config_url"), previous_interval=_previous("pooling_interval")
    )


def previous_of(config: ConfigVersion) -> ConfigVersion | None:
    """The previous version's content as with_previous read it; None for a first version."""
    if getattr(config, "previous_interval", None) is None:
        return None
    return ConfigVersion(config_url=config.previous_url, pooling_interval=config.previous_interval)


def diff_against_previous(config: ConfigVersion) -> list[dict]:
    """The fields a version (read by with_previous) changed, each with its value before (None
    for a first version) and after."""
    previous = previous_of(config)
    return [
        {
            "field": field,
            "before": getattr(previous, field) if previous else None,
            "after": getattr(config, field),
        }
        for field in changed_fields(config, previous)
    ]
