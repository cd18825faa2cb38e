"""Giving and taking roles (the admin's user page and `manage.py grant_role` both come here), and
what a login and a token refresh add to simplejwt's own work: the entry in the audit log."""

from django.contrib.auth.models import Group
from django.db import transaction
from rest_framework_simplejwt.tokens import RefreshToken

from apps.accounts.models import User
from apps.accounts.roles import ROLES
from apps.audit.models import AuditEntry
from apps.audit.services import record_event


class UnknownRole(ValueError):
    """A role name that is not one of ROLES."""

    def __init__(self, role: str) -> None:
        super().__init__(f"Unknown role {role!r}; the roles are {', '.join(ROLES)} (or none).")


@transaction.atomic
def set_roles(
    user: User, roles, *, acting_user=None, source_ip: str | None = None
) -> tuple[list[str], list[str]]:
    """Make `roles` exactly the user's roles. Returns (added, removed), audited when either is
    not empty. A user with a role may enter the admin (is_staff); one without none, unless a
    superuser, who needs no role."""
    wanted = set(roles)
    for role in wanted - set(ROLES):
        raise UnknownRole(role)
    # The migration makes the groups; one deleted since is made again rather than failing.
    groups = {role: Group.objects.get_or_create(name=role)[0] for role in wanted}
    held = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
    added = [role for role in ROLES if role in wanted - held]
    removed = [role for role in ROLES if role in held - wanted]
    user.groups.add(*(groups[role] for role in added))
    user.groups.remove(*user.groups.filter(name__in=removed))
    staff = bool(wanted) or user.is_superuser
    if user.is_staff != staff:
        user.is_staff = staff
        user.save(update_fields=["is_staff"])
    user.__dict__.pop("_role_names", None)
    if added or removed:
        record_event(
            AuditEntry.ROLES_CHANGED,
            actor=acting_user,
            source_ip=source_ip,
            target=f"user {user.email}",
            detail={
                "added": added,
                "removed": removed,
                "roles": [role for role in ROLES if role in wanted],
            },
        )
    return added, removed


def grant_role(user: User, role: str, *, acting_user=None, source_ip: str | None = None):
    """Add one role to those the user has; `none` takes every role away."""
    if role == "none":
        return set_roles(user, [], acting_user=acting_user, source_ip=source_ip)
    if role not in ROLES:
        raise UnknownRole(role)
    held = user.groups.filter(name__in=ROLES).values_list("name", flat=True)
    return set_roles(user, {*held, role}, acting_user=acting_user, source_ip=source_ip)


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
