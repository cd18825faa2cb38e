"""Pre-flight: a few live agents have one of their workers fetch a URL before it ships.

The controller cannot call an agent (agents may sit behind NAT), so the request rides on the
watch each agent holds: every controller process hears it (notifications.publish_preflight) and
the one holding that agent's watch answers it with the state the agent already has plus the
request. Nothing about the version changes in that answer, and the agent watches again at once
while the fetch runs on the side, so a change made meanwhile reaches it as fast as ever. A
process where the agent holds no watch keeps the request for the agent's next watch, until it
expires. The agent posts the result back (POST /agent/preflight); the results meet in the cache,
where the waiting admin request reads them.
"""

import ipaddress
import logging
import math
import re
import time
import uuid
from urllib.parse import urlsplit

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from apps.agents.models import Agent
from apps.agents.services import status_condition
from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from apps.configs import notifications
from apps.configs.errors import (
    NoConfigYet,
    NoLiveAgent,
    PreflightFailed,
    PreflightRateLimited,
    UnknownPreflight,
)
from apps.configs.services import get_current_config, get_current_state
from apps.scopes.services import default_scope_id, scope_names

logger = logging.getLogger(__name__)

# How often the waiting request looks for results.
RESULT_POLL_SECONDS = 0.05
# Results and requests outlive the wait a little, for an answer that arrives just in time.
KEEP_SECONDS = 30
# The clock of the rate limit's minutes; a test replaces this one name.
clock = time.time


def _request_key(preflight_id: str) -> str:
    return f"preflight:{preflight_id}"


def _result_key(preflight_id: str, agent_id: str) -> str:
    return f"preflight:{preflight_id}:{agent_id}"


def choose_agents(scope_id: int, count: int) -> list[Agent]:
    """Up to `count` live agents of a scope (in contact recently, not revoked), most recently
    seen first."""
    state, now = get_current_state(scope_id), timezone.now()
    live = status_condition("in_sync", state, now) | status_condition("behind", state, now)
    return list(Agent.objects.filter(live, scope_id=scope_id).order_by("-last_seen")[:count])


def run_preflight(
    *, config_url: str, scope_id: int | None = None, agents: int = 3, timeout_seconds: int = 10
) -> dict:
    """Ask up to `agents` live agents of a scope (the default scope when None) to fetch
    `config_url` through one of their workers, and wait up to `timeout_seconds` for their
    answers. {"config_url", "ok", "results"}, a result for every agent asked (those that did
    not answer too); `ok` by `passes`."""
    chosen = choose_agents(scope_id or default_scope_id(), agents)
    if not chosen:
        raise NoLiveAgent()
    preflight_id = uuid.uuid4().hex
    agent_ids = [str(agent.pk) for agent in chosen]
    cache.set(
        _request_key(preflight_id),
        {"config_url": config_url, "agents": agent_ids},
        timeout_seconds + KEEP_SECONDS,
    )
    notifications.publish_preflight(
        {
            "id": preflight_id,
            "config_url": config_url,
            "timeout_seconds": timeout_seconds,
            "agent_ids": agent_ids,
            "expires_at": time.time() + timeout_seconds,
        }
    )
    logger.info(
        "pre-flight %s of %s asked of %s agent(s)", preflight_id, config_url, len(agent_ids)
    )
    keys = {agent_id: _result_key(preflight_id, agent_id) for agent_id in agent_ids}
    deadline = time.monotonic() + timeout_seconds
    found: dict = {}
    while True:
        found = {
            key: value
            for key, value in cache.get_many(list(keys.values())).items()
            if isinstance(value, dict)
        }
        if len(found) == len(keys) or time.monotonic() >= deadline:
            break
        time.sleep(RESULT_POLL_SECONDS)
    results = []
    for agent_id, key in keys.items():
        result = found.get(key)
        if not isinstance(result, dict):
            result = {
                "worker_url": None,
                "status": None,
                "elapsed_ms": None,
                "error": f"the agent did not answer within {timeout_seconds} s",
            }
        else:
            result = {**result, "error": without_addresses(result["error"], config_url)}
        results.append({"agent_id": agent_id, **result})
    ok = passes(results, answered={str(agent_id) for agent_id, key in keys.items() if key in found})
    logger.info(
        "pre-flight %s of %s: %s (%s)",
        preflight_id,
        config_url,
        "ok" if ok else "not ok",
        "; ".join(f"{r['agent_id']}: {r['error'] or 'HTTP ' + str(r['status'])}" for r in results),
    )
    return {"config_url": config_url, "ok": ok, "results": results}


def fetch_passed(result: dict) -> bool:
    """Whether one agent's fetch shows the URL works: an answer below 500 and no error. A 4xx
    passes (the upstream is there and answering); a 5xx, a timeout or no answer does not."""
    status = result.get("status")
    return result.get("error") is None and status is not None and status < 500


def passes(results: list[dict], *, answered: set[str]) -> bool:
    """A majority of the agents asked answered OK (a status below 500, no error), and none of
    those that answered failed. One agent's word is not enough: a stolen agent token could
    answer 200 for a URL the real workers refuse."""
    failed = [r for r in results if r["agent_id"] in answered and not fetch_passed(r)]
    good = [r for r in results if r["agent_id"] in answered and fetch_passed(r)]
    return not failed and len(good) * 2 > len(results)


# IPv4 and IPv6 literals, as libcurl and the worker print the addresses they connected to.
_ADDRESS = re.compile(
    r"(?<![\w.:])(?:\d{1,3}(?:\.\d{1,3}){3}|\[?[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}\]?)"
    r"(?![\w.])"
)


def without_addresses(error: str | None, config_url: str) -> str | None:
    """An agent's error with the addresses the URL resolved to left out: the caller learns that
    the URL was refused or unreachable, not where the controller's network leads. An address
    written in the URL itself is the caller's own and stays."""
    if error is None:
        return None
    host = (urlsplit(config_url).hostname or "").lower()

    def hide(match: re.Match) -> str:
        text = match.group(0)
        if text.strip("[]").lower() == host or not _is_address(text.strip("[]")):
            return text
        return "[address]"

    return _ADDRESS.sub(hide, error)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def reserve_preflight(user) -> None:
    """Count one pre-flight against the user's minute; PreflightRateLimited past
    PREFLIGHT_RATE_PER_MINUTE (0: no limit). Each one has agents' workers fetch a URL, so a
    script (or a stolen token) looping on it would have the fleet hammer a URL for it. Counted
    in the cache, shared by every process with Redis."""
    limit = settings.PREFLIGHT_RATE_PER_MINUTE
    if not limit:
        return
    now = clock()
    window = int(now // 60)
    key = f"preflight-rate:{user.pk}:{window}"
    cache.add(key, 0, 120)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between the two calls
        cache.set(key, 1, 120)
        count = 1
    if count > limit:
        raise PreflightRateLimited(max(1, math.ceil((window + 1) * 60 - now)))


def preflight_before_publish(
    config_url: str | None, *, scope_id: int, actor=None, source_ip: str | None = None
) -> dict:
    """A plan's `"preflight": true`: run the pre-flight of the URL about to be published (the
    current one when the change leaves it as it is), before anything is stored. When it is not
    ok (PreflightFailed, 422) or no agent is live to run it (NoLiveAgent, 409), the refused
    attempt is audited and nothing is published."""
    if config_url is None:
        current = get_current_config(scope_id)
        if current is None:
            raise NoConfigYet()
        config_url = current.config_url
    try:
        answer = run_preflight(config_url=config_url, scope_id=scope_id)
    except NoLiveAgent:
        why = "no agent is live to run the pre-flight"
        _audit_refusal(scope_id, config_url, why, [], actor, source_ip)
        raise
    if not answer["ok"]:
        why = "the pre-flight failed"
        _audit_refusal(scope_id, config_url, why, answer["results"], actor, source_ip)
        raise PreflightFailed(answer)
    return answer


def _audit_refusal(
    scope_id: int, config_url: str, why: str, results: list, actor, source_ip
) -> None:
    record_event(
        AuditEntry.PREFLIGHT_REFUSED,
        actor=actor,
        source_ip=source_ip,
        target="config",
        detail={"config_url": config_url, "why": why, "results": results},
        scope=scope_names(scope_id),
    )
    logger.warning("publish of %s refused: %s", config_url, why)


def record_preflight_result(agent: Agent, *, preflight_id: str, result: dict) -> None:
    """Keep one agent's answer for the request waiting for it; UnknownPreflight when no
    pre-flight with this id asked this agent (or it expired)."""
    request = cache.get(_request_key(preflight_id))
    if not isinstance(request, dict) or str(agent.pk) not in request.get("agents", ()):
        raise UnknownPreflight()
    cache.set(_result_key(preflight_id, str(agent.pk)), result, KEEP_SECONDS)
