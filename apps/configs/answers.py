"""What the requests served in front of Django answer: a version (as a watch's JSON or a
stream's event) and each refusal, defined once for the watch, the stream, the config fetch and
the heartbeat alike.

Thousands of watches woken by one change answer the same bytes, so a version's answer is
encoded once (and per content, which for a version never changes), whichever agents it goes to.
"""

import functools
import json

from apps.configs.asgi import json_response
from controller_site.errors import DATABASE_DOWN

# The fields of a version answer, in the order they are sent.
STATE_FIELDS = ("version", "pooling_interval", "config_url", "uuid")
WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="agent"')
REFUSED_AGENT = "Invalid or revoked agent token."
REVOKED_DETAIL = "This agent has been revoked."
# Each refusal as the arguments of asgi.respond after `send`: (status, body[, extra headers]).
UNAUTHORIZED = (401, {"detail": REFUSED_AGENT}, [WWW_AUTHENTICATE])
# Revoked after its token was accepted: its held watch is answered this, or a new one that
# learns of it between the token's lookup and its hold.
REVOKED = (401, {"detail": REVOKED_DETAIL})
UNAVAILABLE = (503, {"detail": DATABASE_DOWN})
# This process is stopping. A 200 with the unchanged state would tell the agent that the
# controller held the watch for its whole wait, and the agent would wait as long again before
# asking (up to a minute, with any change made meanwhile unseen); "unavailable" makes it retry
# with its backoff, and so find another process or the restarted one within seconds.
SHUTTING_DOWN = (
    503,
    {"detail": "The controller is restarting; try again shortly."},
    [(b"retry-after", b"1")],
)
# Answers of the caps on held watches (hub.HeldWatches): the agent's oldest watch, ended by a
# newer one (429, as for a client asking too much), and a new watch while the process holds its
# maximum (503: another process, or this one shortly, takes it).
REPLACED_DETAIL = (
    "A newer watch of this agent took this one's place (CONTROLLER_MAX_WATCHES_PER_AGENT)."
)
REPLACED = (429, {"detail": REPLACED_DETAIL}, [(b"retry-after", b"1")])
WATCHES_FULL = (
    503,
    {"detail": "This controller holds as many watches as it may; try again shortly."},
    [(b"retry-after", b"5")],
)

# The events of a stream besides versions, and its first line: a client that lost the stream
# (the controller restarting) retries in 1 s.
STREAM_RETRY = b"retry: 1000\n\n"
KEEP_ALIVE = b": keep-alive\n\n"
REVOKED_EVENT = b"event: revoked\ndata: %s\n\n" % json.dumps({"detail": REVOKED_DETAIL}).encode()
REPLACED_EVENT = b"event: replaced\ndata: %s\n\n" % json.dumps({"detail": REPLACED_DETAIL}).encode()


@functools.lru_cache(maxsize=16)
def version_answer(
    version: int, pooling_interval: int | None, config_url: str | None, uuid: str | None
) -> tuple[bytes, list]:
    """The bytes and headers of one version's answer to a watch."""
    return json_response(
        json.dumps(
            {
                "version": version,
                "pooling_interval": pooling_interval,
                "config_url": config_url,
                "uuid": uuid,
            }
        )
    )


def preflight_answer(answer: dict, preflight: dict) -> tuple[bytes, list]:
    """A version's answer with a pre-flight request beside it (not shared: few get one)."""
    fields = {field: answer.get(field) for field in STATE_FIELDS}
    return json_response(json.dumps({**fields, "preflight": preflight}))


@functools.lru_cache(maxsize=16)
def stream_event(
    version: int, pooling_interval: int | None, config_url: str | None, uuid: str | None
) -> bytes:
    """One version's event: its data are the bytes a watch answers, encoded once per version
    for every stream."""
    payload, _ = version_answer(version, pooling_interval, config_url, uuid)
    return b"id: %d\nevent: config\ndata: %s\n\n" % (version, payload)


def preflight_event(request: dict) -> bytes:
    # No id: a pre-flight request is not a version, and must not move the client's Last-Event-ID.
    return b"event: preflight\ndata: %s\n\n" % json.dumps(request).encode()
