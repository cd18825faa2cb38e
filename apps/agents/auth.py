"""Agent-token authentication for the agent endpoints."""

import contextlib
import hmac
import threading
import time
from collections import OrderedDict
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions
from rest_framework.views import APIView

from apps.agents.models import Agent
from controller_site.tokens import AGENT_PREFIX, bearer_token, hash_token

# A process remembers each token's agent for AGENT_AUTH_CACHE_SECONDS, so a busy poller costs
# no query per request while a revocation still takes effect within that time everywhere.
# An active agent is trusted longer, up to TRUST_SECONDS, while the process also reads the
# revocations of the last REVOCATION_LOOKBACK_SECONDS at least once every
# AGENT_AUTH_CACHE_SECONDS (sweep_revocations, run by each process's watch hub): a revoked
# token then still stops working within that time, and a fleet reporting every 10 s costs no
# token query per report. Each entry: (expires, agent, trusted until). Tokens that no agent holds
# are remembered apart, until they expire, so that a flood of made-up tokens costs one query
# each per AGENT_AUTH_CACHE_SECONDS at most and cannot push the fleet's agents out. Both
# memories are bounded and, when full, forget the entry least recently used.
_known: OrderedDict[str, tuple[float, Agent | None, float]] = OrderedDict()
_unknown: OrderedDict[str, float] = OrderedDict()
_last_seen_written: dict[str, float] = {}
_lock = threading.Lock()
_KNOWN_LIMIT = 50_000
_UNKNOWN_LIMIT = 10_000
# The clock of both memories; a test replaces this one name, not time.monotonic for everyone.
clock = time.monotonic
TRUST_SECONDS = 300.0
# Longer than any pause between two sweeps that keep the memory trusted, plus the time a
# revoking transaction may take to commit and the skew between controller hosts' clocks.
REVOCATION_LOOKBACK_SECONDS = 60.0
# Until when the memory is known to hold no agent revoked since it was remembered, and when
# the last sweep started.
_swept_until = 0.0
_swept_at: float | None = None


def reset() -> None:
    """Forget every token this process remembers and every sweep it made, as a process that
    just started: the memory outlives a test database's rows and its reused ids."""
    global _swept_until, _swept_at
    with _lock:
        _known.clear()
        _unknown.clear()
        _last_seen_written.clear()
        _swept_until = 0.0
        _swept_at = None


def find_agent(token: str) -> Agent | None:
    """The active agent holding `token`, or None."""
    digest = token_digest(token)
    if digest is None:
        return None
    known, agent = remembered_agent(digest)
    if not known:
        agent = Agent.objects.filter(token_hash=digest).first()
        _remember({digest: agent})
    return active_agent(agent, digest)


def token_digest(token: str) -> str | None:
    """The stored form of an agent token; None for anything that is not one."""
    return hash_token(token) if token.startswith(AGENT_PREFIX) else None


def remembered_agent(digest: str) -> tuple[bool, Agent | None]:
    """(known, agent) from this process's memory, without a query."""
    cached = _known.get(digest)
    if cached is None:
        expires = _unknown.get(digest)
        return (True, None) if expires is not None and expires > clock() else (False, None)
    now = clock()
    if cached[0] > now or (cached[1] is not None and cached[2] > now and _swept_until > now):
        # Most recently used: the last a full memory forgets. A sweep may have dropped it
        # since the read above.
        with contextlib.suppress(KeyError):
            _known.move_to_end(digest)
        return True, cached[1]
    return False, None


def find_agents(digests: list[str]) -> dict[str, Agent | None]:
    """The agents of many token digests in one query (None for an unknown one), remembered as
    find_agent remembers one."""
    found: dict[str, Agent | None] = dict.fromkeys(digests)
    # Thousands at once right after a change: only what authentication and the watch need is
    # read (the rest, say the workers' JSON, would cost more to decode than the query itself).
    # The watch reads `labels` and `scope_id` on the event loop, where a deferred field cannot
    # be loaded.
    for agent in Agent.objects.filter(token_hash__in=digests).only(
        "id", "token_hash", "revoked_at", "labels", "scope"
    ):
        found[agent.token_hash] = agent
    _remember(found)
    return found


def _remember(agents: dict[str, Agent | None]) -> None:
    now = clock()
    expires = now + settings.AGENT_AUTH_CACHE_SECONDS
    trusted = now + TRUST_SECONDS
    with _lock:
        for digest, agent in agents.items():
            if agent is None:
                _unknown[digest] = expires
                _unknown.move_to_end(digest)
            else:
                _unknown.pop(digest, None)
                _known[digest] = (expires, agent, trusted)
                _known.move_to_end(digest)
        while len(_known) > _KNOWN_LIMIT:
            _known.popitem(last=False)
        while len(_unknown) > _UNKNOWN_LIMIT:
            _unknown.popitem(last=False)


def sweep_revocations() -> int:
    """Drop from this process's memory every agent revoked, or whose labels were changed, in the
    last REVOCATION_LOOKBACK_SECONDS, and trust the rest of it for AGENT_AUTH_CACHE_SECONDS more
    (from the moment this started). On the first sweep, and after a pause of more than half the
    lookback since the last one (the database was unreachable, say), the whole memory is
    dropped first: a revocation may have been missed. Returns how many agents were dropped."""
    global _swept_until, _swept_at
    started = clock()
    since = timezone.now() - timedelta(seconds=REVOCATION_LOOKBACK_SECONDS)
    # An agent whose labels an operator changed is forgotten too: its labels pick its target.
    revoked = list(
        Agent.objects.filter(
            Q(revoked_at__gte=since) | Q(labels_changed_at__gte=since)
        ).values_list("token_hash", flat=True)
    )
    with _lock:
        if _swept_at is None or started - _swept_at > REVOCATION_LOOKBACK_SECONDS / 2:
            _known.clear()
            _unknown.clear()
        dropped = sum(_known.pop(digest, None) is not None for digest in revoked)
        _swept_at = started
        _swept_until = started + settings.AGENT_AUTH_CACHE_SECONDS
    return dropped


def active_agent(agent: Agent | None, digest: str) -> Agent | None:
    """`agent` when it is active and holds the token of this digest, else None."""
    if agent is None or not agent.is_active:
        return None
    if not hmac.compare_digest(agent.token_hash, digest):
        return None
    return agent


def forget_agent(agent: Agent) -> None:
    """Drop this process's memory of the agent's token (on revocation, and when its labels
    change)."""
    with _lock:
        _known.pop(agent.token_hash, None)


def touch_last_seen(agent: Agent) -> None:
    """Record contact, writing to the database at most every AGENT_LAST_SEEN_WRITE_SECONDS."""
    if last_seen_due(agent):
        Agent.objects.filter(pk=agent.pk).update(last_seen=timezone.now())


def last_seen_due(agent: Agent) -> bool:
    """Whether a contact of the agent now is to be written as its last_seen (at most every
    AGENT_LAST_SEEN_WRITE_SECONDS); when it is, the caller writes it."""
    key = str(agent.pk)
    now = clock()
    last = _last_seen_written.get(key)
    if last is not None and now - last < settings.AGENT_LAST_SEEN_WRITE_SECONDS:
        return False
    _last_seen_written[key] = now
    return True


def forget_last_seen(agent_ids: list[str]) -> None:
    """Their last contact was not written after all: the next one is."""
    for agent_id in agent_ids:
        _last_seen_written.pop(agent_id, None)


def write_last_seen(agent_ids: list[str]) -> None:
    """The contacts queued by the ASGI front (HeartbeatRecorder.note_seen), in one statement."""
    Agent.objects.filter(pk__in=agent_ids).update(last_seen=timezone.now())


def note_last_seen_queued(agent_id: str) -> None:
    """A heartbeat of this agent waits for its batch, which writes last_seen: the watch that
    follows it (every agent watches again right after a change) need not write it too. Without
    this, 10,000 agents watching again after a change made 10,000 single-row UPDATEs."""
    _last_seen_written[agent_id] = clock()


class AgentTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <agent token>`; anything else is 401."""

    keyword = "Bearer"

    def authenticate(self, request):
        token = bearer_token(request.META.get("HTTP_AUTHORIZATION"))
        if token is None:
            return None
        agent = find_agent(token)
        if agent is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked agent token.")
        touch_last_seen(agent)
        return agent, token

    def authenticate_header(self, request) -> str:
        return f'{self.keyword} realm="agent"'


class IsAgent(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        return isinstance(request.user, Agent)


class AgentEndpoint(APIView):
    """The base of every view an agent calls: its token authenticates it, nothing else does."""

    authentication_classes = [AgentTokenAuthentication]
    permission_classes = [IsAgent]
