"""What a login and a token refresh add to simplejwt's own work: the entry in the audit log."""

from rest_framework_simplejwt.tokens import RefreshToken

from apps.accounts.models import User
from apps.audit.models import AuditEntry
from apps.audit.services import record_event


def record_login(user: User, *, source_ip: str | None, via: str) -> None:
    """A successful login through the API (`via="api"`) or the admin (`via="admin"`)."""
    record_event(AuditEntry.LOGIN_SUCCEEDED, actor=user, source_ip=source_ip, detail={"via": via})


def record_token_refresh(refresh_token: str, *, source_ip: str | None) -> None:
    """A refresh token exchanged for new ones; `refresh_token` is the new (rotated) one."""
    # The rotated token names the same user as the one sent, which is now blacklisted.
    user_id = RefreshToken(refresh_token, verify=False).get("user_id")
    record_event(
        AuditEntry.TOKEN_REFRESHED,
        actor=User.objects.filter(pk=user_id).first() or f"user:{user_id}",
        source_ip=source_ip,
    )
