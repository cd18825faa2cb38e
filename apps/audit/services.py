"""Writing the audit log. Service functions call `record_event` inside their own transaction,
so an entry exists exactly when the change it describes was committed."""

from apps.audit.models import AuditEntry

# The actor of changes made by a management command on the server itself.
SYSTEM_ACTOR = "system"
_ACTOR_MAX = AuditEntry._meta.get_field("actor").max_length
_TARGET_MAX = AuditEntry._meta.get_field("target").max_length


def actor_label(actor) -> str:
    """How an entry names who acted: an admin's email, `token NAME of EMAIL`, `agent:<id>`, or
    `system`."""
    if actor is None:
        return SYSTEM_ACTOR
    if isinstance(actor, str):
        return actor[:_ACTOR_MAX]
    # A user acting through an API token: "token NAME of EMAIL" (apps.accounts.api_tokens).
    named = getattr(actor, "audit_name", None)
    if named:
        return named[:_ACTOR_MAX]
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
    scope: tuple[str, str] | None = None,
) -> AuditEntry:
    """`scope` is the (application, environment) the entry is about, by name; None for what
    belongs to no scope."""
    application, environment = scope or ("", "")
    return AuditEntry.objects.create(
        action=action,
        actor=actor_label(actor),
        source_ip=source_ip,
        target=target[:_TARGET_MAX],
        detail=detail or {},
        application=application,
        environment=environment,
    )
