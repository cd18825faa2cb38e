"""Writing the audit log. Service functions call `record_event` inside their own transaction,
so an entry exists exactly when the change it describes was committed."""

import ipaddress

from rest_framework.throttling import BaseThrottle

from apps.audit.models import AuditEntry

# The actor of changes made by a management command on the server itself.
SYSTEM_ACTOR = "system"
_ACTOR_MAX = AuditEntry._meta.get_field("actor").max_length
_TARGET_MAX = AuditEntry._meta.get_field("target").max_length


def client_ip(request) -> str | None:
    """The client's address as the login throttle sees it: REMOTE_ADDR, or the NUM_PROXIES-th
    address from the right of X-Forwarded-For behind trusted proxies."""
    if request is None:
        return None
    ident = BaseThrottle().get_ident(request)
    try:
        return str(ipaddress.ip_address((ident or "").strip()))
    except ValueError:
        # A proxy passed something that is not an address; keep the entry, without the address.
        return None


def actor_label(actor) -> str:
    """How an entry names who acted: an admin's email, `agent:<id>`, or `system`."""
    if actor is None:
        return SYSTEM_ACTOR
    if isinstance(actor, str):
        return actor[:_ACTOR_MAX]
    email = getattr(actor, "email", None)
    if email:
        return email
    return f"{actor._meta.model_name}:{actor.pk}"


def record_event(
    action: str,
    *,
    actor=None,
    source_ip: str | None = None,
    target: str = "",
    detail: dict | None = None,
) -> AuditEntry:
    return AuditEntry.objects.create(
        action=action,
        actor=actor_label(actor),
        source_ip=source_ip,
        target=target[:_TARGET_MAX],
        detail=detail or {},
    )
