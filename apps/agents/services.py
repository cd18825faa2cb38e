"""Registration tokens, agent registration, heartbeats and revocation."""

import logging
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework import status

from apps.agents.auth import forget_agent
from apps.agents.models import Agent, RegistrationToken
from apps.agents.tokens import AGENT_PREFIX, REGISTRATION_PREFIX, hash_token, new_token
from apps.configs.errors import ServiceError
from apps.configs.notifications import publish_revocation

logger = logging.getLogger(__name__)


class InvalidRegistrationToken(ServiceError):
    status_code = status.HTTP_401_UNAUTHORIZED

    def __init__(self) -> None:
        super().__init__("Registration token is unknown, already used or expired.")


def issue_registration_token(
    *, actor=None, ttl: int | None = None
) -> tuple[str, RegistrationToken]:
    """Create a one-time registration token; the plain token is returned once and not stored."""
    ttl = settings.REGISTRATION_TOKEN_TTL if ttl is None else ttl
    token = new_token(REGISTRATION_PREFIX)
    record = RegistrationToken.objects.create(
        token_hash=hash_token(token),
        expires_at=timezone.now() + timedelta(seconds=ttl),
        created_by=actor,
    )
    logger.info("registration token issued, expires %s", record.expires_at.isoformat())
    return token, record


def register_agent(*, token: str, name: str = "", hostname: str = "") -> tuple[Agent, str]:
    """Consume a registration token and create an agent; returns (agent, agent token)."""
    now = timezone.now()
    digest = hash_token(token)
    with transaction.atomic():
        # The conditional UPDATE is the arbiter: of two registrations with one token, exactly
        # one sees a row count of 1.
        won = RegistrationToken.objects.filter(
            token_hash=digest, used_at__isnull=True, expires_at__gt=now
        ).update(used_at=now)
        if won != 1:
            raise InvalidRegistrationToken()
        agent_token = new_token(AGENT_PREFIX)
        agent = Agent.objects.create(
            name=name, hostname=hostname, token_hash=hash_token(agent_token), last_seen=now
        )
        RegistrationToken.objects.filter(token_hash=digest).update(used_by=agent)
    logger.info("agent %s registered (name=%r, hostname=%r)", agent.pk, name, hostname)
    return agent, agent_token


def record_heartbeat(agent: Agent, *, applied_version: int | None, workers: list[dict]) -> None:
    Agent.objects.filter(pk=agent.pk).update(
        last_seen=timezone.now(), applied_version=applied_version, workers=workers
    )


def revoke_agent(agent: Agent) -> bool:
    """Refuse the agent's token from now on. Returns False when it was revoked already."""
    revoked = Agent.objects.filter(pk=agent.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    forget_agent(agent)
    if revoked:
        logger.info("agent %s revoked", agent.pk)
        # Cut the watch it may be holding, in every controller process.
        transaction.on_commit(partial(publish_revocation, agent.pk))
    return bool(revoked)


STATUSES = ("in_sync", "behind", "stale", "revoked")
# Before any config exists, agents check every 10 s; stale means three missed periods.
DEFAULT_PERIOD = 10


def agent_status(agent: Agent, state: dict, now=None) -> str:
    """in_sync, behind, stale or revoked, from the agent's last report and the current state."""
    if not agent.is_active:
        return "revoked"
    now = now or timezone.now()
    period = state["pooling_interval"] or DEFAULT_PERIOD
    if agent.last_seen is None or now - agent.last_seen > timedelta(seconds=3 * period):
        return "stale"
    if (agent.applied_version or 0) < state["version"]:
        return "behind"
    return "in_sync"
