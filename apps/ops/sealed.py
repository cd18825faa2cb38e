"""What the controller keeps in Redis and sends through it, sealed with a key from SECRET_KEY.

Every controller process shares Redis, and whoever can write there could otherwise choose what
the processes read back: a pickled cache value runs code when it is loaded, and a made-up change
notification would be served to held watches as the new config. So everything the controller
writes to Redis is JSON with an HMAC-SHA256 over it, keyed from SECRET_KEY (which Redis never
sees), and checked before use: a cache value without a valid seal is a miss, and a notification
without one changes nothing that an agent receives (the hub re-reads the database instead).
Nothing read from Redis is ever unpickled.
"""

import functools
import hashlib
import hmac
import json
import logging
import time
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django_redis.serializers.base import BaseSerializer

logger = logging.getLogger(__name__)

CACHE_SALT = "apps.ops.sealed.cache"
MESSAGE_SALT = "apps.ops.sealed.notification"
MAC_FIELD = "mac"
# A sealed cache value older than this is a miss even with a valid seal, so that a value copied
# out of Redis cannot be written back much later. Longer than any timeout the controller sets
# (the served state's 60 s, a pre-flight's 90 s at most).
CACHE_VALUE_MAX_AGE = 300


def _mac(salt: str, payload: bytes) -> str:
    # salted_hmac(salt, payload, algorithm="sha256"), with its key derived once per SECRET_KEY
    # rather than on each of the thousands of reads that follow a change.
    return hmac.new(_key(salt, settings.SECRET_KEY), payload, hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=8)
def _key(salt: str, secret: str) -> bytes:
    return hashlib.sha256((salt + secret).encode()).digest()


def seal_message(message: dict) -> str:
    """The JSON of a notification, with the seal of its other fields as `mac`. A hub of an
    older release reads the fields and ignores the seal."""
    return json.dumps({**message, MAC_FIELD: _mac(MESSAGE_SALT, _canonical(message))})


def open_message(message: dict) -> dict | None:
    """The notification without its seal when the seal is valid, else None."""
    given = message.get(MAC_FIELD)
    fields = {key: value for key, value in message.items() if key != MAC_FIELD}
    if not isinstance(given, str):
        return None
    if not hmac.compare_digest(given.encode(), _mac(MESSAGE_SALT, _canonical(fields)).encode()):
        return None
    return fields


def _canonical(message: dict) -> bytes:
    return json.dumps(message, sort_keys=True, separators=(",", ":")).encode()


class SealedJSONSerializer(BaseSerializer):
    """django-redis's serializer for the controller's cache: `<mac>:<written at>:<JSON>`.

    A value that is not one of ours (planted, written with another SECRET_KEY, or left by a
    release that pickled) loads as None, which every reader takes for a miss."""

    def dumps(self, value: Any) -> bytes:
        payload = b"%d:%s" % (int(time.time()), json.dumps(value, cls=DjangoJSONEncoder).encode())
        return _mac(CACHE_SALT, payload).encode() + b":" + payload

    def loads(self, value: bytes) -> Any:
        given, _, payload = bytes(value).partition(b":")
        written, _, body = payload.partition(b":")
        if not hmac.compare_digest(given, _mac(CACHE_SALT, payload).encode()):
            logger.warning(
                "ignored a cache value not sealed with this SECRET_KEY (%d bytes): written by "
                "something other than this controller, or before SECRET_KEY changed",
                len(value),
            )
            return None
        if not written.isdigit() or time.time() - int(written) > CACHE_VALUE_MAX_AGE:
            return None
        return json.loads(body)
