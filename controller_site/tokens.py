"""Secrets the controller hands out (agents' and registration tokens, pipelines' API tokens):
random, shown once, stored only as SHA-256."""

import hashlib
import secrets

REGISTRATION_PREFIX = "reg_"
AGENT_PREFIX = "agt_"
API_TOKEN_PREFIX = "dcs_"  # noqa: S105 - a prefix, not a secret


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token from an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        return None
    return token
