"""GET /config/agent and POST /agent/heartbeat, served in front of Django (apps/configs/front.py):
besides the watch, the two requests every agent makes, all at once right after a change.

Heartbeats are checked here, answered 204 and written in batches (apps/agents/heartbeats.py).
"""

import functools
import json
import logging

from django.conf import settings
from django.db import DatabaseError

from apps.agents.auth import (
    active_agent,
    find_agent,
    note_last_seen_queued,
    remembered_agent,
    token_digest,
    touch_last_seen,
)
from apps.agents.heartbeats import HeartbeatRecorder, InvalidHeartbeat, check_heartbeat
from apps.agents.labels import ignore_reported_labels
from apps.configs.answers import UNAUTHORIZED, UNAVAILABLE
from apps.configs.asgi import (
    TOO_LARGE,
    header,
    json_response,
    read_body,
    respond,
    response_bytes,
    send_answer,
)
from apps.configs.errors import NoConfigYet
from apps.configs.hub import with_database
from apps.configs.models import ConfigVersion
from apps.configs.serializers import ConfigSerializer
from apps.configs.services import read_for_agent
from controller_site.errors import is_database_failure
from controller_site.tokens import bearer_token

logger = logging.getLogger(__name__)

CONFIG_PATH = "/config/agent"
HEARTBEAT_PATH = "/agent/heartbeat"


@with_database
def _config_for_agent(token: str | None, if_none_match: str | None):
    """(status, body, extra headers) for GET /config/agent, in one hop to a worker thread."""
    agent = find_agent(token) if token else None
    if agent is None:
        return UNAUTHORIZED
    touch_last_seen(agent)
    try:
        version, etag, unchanged = read_for_agent(if_none_match, agent)
    except NoConfigYet as refused:
        return 404, {"detail": refused.detail}, []
    headers = [(b"etag", etag.encode())]
    if unchanged:
        return 304, None, headers
    return 200, config_body(agent.scope_id, version), headers


@functools.lru_cache(maxsize=64)
def config_body(scope_id: int, version: int) -> bytes:
    """The JSON of one version of a scope; a version never changes once made, so it is kept."""
    config = ConfigVersion.objects.get(scope_id=scope_id, version=version)
    return json.dumps(ConfigSerializer(config).data).encode()


async def serve_config(scope, receive, send) -> None:
    """GET /config/agent: every agent fetches it right after a change, all at once."""
    token = bearer_token(header(scope, b"authorization"))
    try:
        status, body, headers = await _config_for_agent(token, header(scope, b"if-none-match"))
    except DatabaseError as exc:
        if not is_database_failure(exc):
            raise  # a bug in a query, not an outage: 500, with its traceback
        logger.error("config fetch: database unavailable: %s", exc)
        status, body, headers = *UNAVAILABLE, []
    if isinstance(body, dict):
        payload, base = json_response(json.dumps(body))
    else:
        payload, base = response_bytes(body or b"")
        if status == 304:
            base = [(b"cache-control", b"no-store")]
    await send_answer(send, status, payload, base + headers)


async def take_heartbeat(heartbeats: HeartbeatRecorder, scope, receive, send) -> None:
    """POST /agent/heartbeat: checked here, answered 204, written with the next batch."""
    body = await read_body(receive, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    if body is None:
        return  # the client left
    media_type = (header(scope, b"content-type") or "application/json").split(";")[0]
    digest = token_digest(bearer_token(header(scope, b"authorization")) or "")
    agent = None
    if digest is not None:
        known, agent = remembered_agent(digest)
        if not known:
            try:
                agent = await heartbeats.find(digest)
            except DatabaseError as exc:
                if not is_database_failure(exc):
                    raise  # a bug in a query, not an outage: 500, with its traceback
                logger.error("heartbeat: database unavailable: %s", exc)
                await respond(send, *UNAVAILABLE)
                return
        agent = active_agent(agent, digest)
    if agent is None:
        await respond(send, *UNAUTHORIZED)
    elif body is TOO_LARGE:
        await respond(send, 413, {"detail": "The request body is too large."})
    elif media_type.strip().lower() != "application/json":
        await respond(send, 415, {"detail": f'Unsupported media type "{media_type}" in request.'})
    else:
        try:
            report = check_heartbeat(json.loads(body) if body else {})
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            await respond(send, 400, {"detail": f"JSON parse error - {exc}"})
            return
        except InvalidHeartbeat as exc:
            await respond(send, 400, exc.errors)
            return
        heartbeats.add(str(agent.pk), report)
        note_last_seen_queued(str(agent.pk))
        # Labels are the operator's: reported ones that differ change nothing.
        ignore_reported_labels(agent, report["labels"])
        await send_answer(send, 204, b"", [])
