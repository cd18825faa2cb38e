"""Webhook secrets and signatures, in the Standard Webhooks format (standardwebhooks.com).

A secret is `whsec_` + base64 of 32 random bytes. Unlike the tokens the controller checks
(stored as SHA-256, apps/agents/tokens.py), a signing secret is used to sign, so it is kept as
it is: whoever reads the database can sign as the controller, as whoever reads the settings can
sign pushes to workers with INTERNAL_KEY. It is answered once, on creation and rotation, and
never listed.

The signature is the `standardwebhooks` package's, the library receivers verify with, so the
two cannot drift apart.
"""

import base64
import secrets
from datetime import datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature_header(
    secrets_in_use: list[str], message_id: str, timestamp: datetime, body: str
) -> str:
    """The webhook-signature header: one `v1,<base64>` per secret, separated by spaces. During a
    rotation both the new and the old secret sign, so a receiver that has either verifies."""
    return " ".join(
        Webhook(secret).sign(msg_id=message_id, timestamp=timestamp, data=body)
        for secret in secrets_in_use
    )
