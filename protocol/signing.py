"""Signed pushes from agent to worker: `X-Signature: t=<unix seconds>,v1=<hex>`.

v1 is HMAC-SHA256 over "<t>.<raw body>" with the shared INTERNAL_KEY. The timestamp inside the
signed text bounds a replay to the tolerance window, and the worker's version check refuses an
older config even inside that window, and SeenSignatures refuses a signature it has already
accepted within it, so a captured push cannot be sent again at all.
"""

import hashlib
import hmac
import threading
import time

SIGNATURE_HEADER = "X-Signature"
TOLERANCE_SECONDS = 300
# The worker's refusal of a signature it has already accepted. The agent signs every push anew,
# so it meets this only when another agent of the same worker (same key) pushed the very same
# bytes within the same second: the worker has them.
REPLAYED_PUSH = "X-Signature was already used: a replayed push"


class BadSignature(Exception):
    """The signature header is missing, malformed, stale or does not match the body."""


def _digest(key: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def sign(body: bytes, key: str, now: float | None = None) -> str:
    """The X-Signature header value for `body`."""
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp},v1={_digest(key, timestamp, body)}"


def verify(header: str | None, body: bytes, key: str, now: float | None = None) -> None:
    """Raise BadSignature unless `header` signs `body` with `key` within the tolerance."""
    if not header:
        raise BadSignature("missing X-Signature")
    fields: dict[str, str] = {}
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name in fields:
            raise BadSignature("malformed X-Signature")
        fields[name] = value
    timestamp_text, given = fields.get("t", ""), fields.get("v1", "")
    if not timestamp_text.isdigit() or len(timestamp_text) > 12 or not given:
        raise BadSignature("malformed X-Signature")
    timestamp = int(timestamp_text)
    current = time.time() if now is None else now
    if abs(current - timestamp) > TOLERANCE_SECONDS:
        raise BadSignature("X-Signature timestamp is more than 300 s from the worker's clock")
    if not hmac.compare_digest(_digest(key, timestamp, body), given):
        raise BadSignature("X-Signature does not match the body")


class SeenSignatures:
    """The signatures accepted in the last tolerance window: a repeat is a replay.

    A signature older than the window is refused as stale anyway, so each is kept only until
    then; only valid signatures are kept, so the memory is bounded by the genuine pushes.
    """

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def remember(self, header: str, now: float | None = None) -> None:
        """Keep `header` (already verified); raise BadSignature when it was seen before."""
        current = time.time() if now is None else now
        fields = dict(part.strip().partition("=")[::2] for part in header.split(","))
        # Keyed on what was signed, not on the header's spelling (spaces around the commas).
        key = f"{fields['t']}:{fields['v1']}"
        with self._lock:
            if self._expiry.get(key, 0) > current:
                raise BadSignature(REPLAYED_PUSH)
            for seen, until in list(self._expiry.items()):
                if until <= current:
                    del self._expiry[seen]
            self._expiry[key] = int(fields["t"]) + TOLERANCE_SECONDS + 1
