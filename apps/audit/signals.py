"""Logins through any door (the API's JWT login records its own success) and every change made
in the Django admin, which Django itself notes as a LogEntry."""

import contextvars

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db.models.signals import post_save
from django.dispatch import receiver

from apps.accounts.services import record_login
from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from controller_site.request_info import client_ip

# The address of the admin request being served in this thread or task. LogEntry carries no
# request, so the admin site sets this around each of its views (see controller_site.admin_site).
admin_request_ip: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "admin_request_ip", default=None
)

_ADMIN_ACTIONS = {
    ADDITION: AuditEntry.ADMIN_ADDED,
    CHANGE: AuditEntry.ADMIN_CHANGED,
    DELETION: AuditEntry.ADMIN_DELETED,
}


@receiver(user_logged_in, dispatch_uid="audit_session_login")
def _session_login(sender, request, user, **kwargs) -> None:
    record_login(user, source_ip=client_ip(request), via="admin")


@receiver(user_login_failed, dispatch_uid="audit_login_failure")
def _login_failure(sender, credentials, request=None, **kwargs) -> None:
    # Only the name that was tried; Django has masked the password already, and it is not kept.
    tried = credentials.get("email") or credentials.get("username") or ""
    record_event(
        AuditEntry.LOGIN_FAILED,
        actor=str(tried).strip().lower(),
        source_ip=client_ip(request),
        detail={"via": "admin" if request is not None and _is_admin(request) else "api"},
    )


def _is_admin(request) -> bool:
    return request.path.startswith("/admin/")


@receiver(post_save, sender=LogEntry, dispatch_uid="audit_admin_change")
def _admin_change(sender, instance: LogEntry, created: bool, **kwargs) -> None:
    if not created:
        return
    model = instance.content_type.model_class() if instance.content_type_id else None
    label = model._meta.verbose_name if model is not None else "object"
    record_event(
        _ADMIN_ACTIONS.get(instance.action_flag, AuditEntry.ADMIN_CHANGED),
        actor=instance.user,
        source_ip=admin_request_ip.get(),
        target=f"{label} {instance.object_repr}",
        detail={
            "object_id": str(instance.object_id),
            "change": instance.get_change_message(),
        },
    )
