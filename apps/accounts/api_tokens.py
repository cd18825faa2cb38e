"""API tokens: what a pipeline holds instead of a person's password (apps.accounts.models.ApiToken).

A token acts as its user, narrowed to the token's one role in the token's part of the fleet, and
never beyond what the user holds at the moment of each call: taking a role from the user takes
it from the user's tokens at once. Only the SHA-256 of a token is stored.
"""

import copy
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from apps.accounts.models import ApiToken, User
from apps.accounts.roles import grants_of, roles_of
from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from controller_site.tokens import API_TOKEN_PREFIX, hash_token, new_token

# The longest a token may live, and how long one lives when its creator names no end.
MAX_LIFETIME = timedelta(days=365)
DEFAULT_LIFETIME = timedelta(days=90)
# A token's last use is written at most this often: a pipeline's burst of calls is one write.
LAST_USED_WRITE = timedelta(minutes=1)


class TokenRefused(Exception):
    """A token that may not be made as asked; the message says why, for a 400 or a 403."""

    def __init__(self, message: str, *, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


def holds(user: User, role: str, application_id: int | None, environment_id: int | None) -> bool:
    """Whether `user` holds `role` in all of the part of the fleet named (None: every
    application, or every environment)."""
    if not user.is_active:
        return False
    if user.is_superuser or role in roles_of(user):
        return True
    return any(
        granted == role
        and (application is None or application == application_id)
        and (environment is None or environment == environment_id)
        for granted, application, environment in grants_of(user)
    )


def issue_api_token(
    *,
    creator: User,
    user: User,
    name: str,
    role: str,
    application=None,
    environment=None,
    expires_at: datetime | None = None,
    source_ip: str | None = None,
) -> tuple[ApiToken, str]:
    """Make a token for `user` (the creator, or anyone when the creator is a superuser); returns
    it and its secret, which is never shown again. Refused (TokenRefused) beyond a year, in the
    past, for someone else by a non-superuser, or beyond what the user or the creator holds."""
    now = timezone.now()
    expires_at = expires_at or now + DEFAULT_LIFETIME
    if expires_at <= now:
        raise TokenRefused("expires_at must be in the future.")
    if expires_at > now + MAX_LIFETIME:
        raise TokenRefused("A token lives at most a year: expires_at is too far ahead.")
    if user.pk != creator.pk and not creator.is_superuser:
        raise TokenRefused("Only a superuser makes tokens for someone else.", forbidden=True)
    application_id = application.pk if application else None
    environment_id = environment.pk if environment else None
    for who in {creator, user}:
        if not holds(who, role, application_id, environment_id):
            where = f"{application.name if application else '*'}/"
            where += environment.name if environment else "*"
            raise TokenRefused(
                f"{who.email} does not hold the {role} role in {where}: a token never has more "
                "rights than its user and its creator.",
                forbidden=True,
            )
    secret = new_token(API_TOKEN_PREFIX)
    with transaction.atomic():
        token = ApiToken.objects.create(
            name=name,
            user=user,
            role=role,
            application=application,
            environment=environment,
            token_hash=hash_token(secret),
            created_by=creator,
            expires_at=expires_at,
        )
        record_event(
            AuditEntry.API_TOKEN_ISSUED,
            actor=creator,
            source_ip=source_ip,
            target=f"API token {name} of {user.email}",
            detail={"role": role, "scope": token.scope_label, "expires_at": expires_at.isoformat()},
        )
    return token, secret


def revoke_api_token(token: ApiToken, *, actor, source_ip: str | None = None) -> None:
    """Refuse the token from its next call on (a no-op when already revoked)."""
    with transaction.atomic():
        revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if revoked:
            record_event(
                AuditEntry.API_TOKEN_REVOKED,
                actor=actor,
                source_ip=source_ip,
                target=f"API token {token.name} of {token.user.email}",
            )


def find_api_token(secret: str) -> ApiToken | None:
    """The usable token of a secret, or None: unknown, revoked, expired, or its user no longer
    active or no longer holding the token's role."""
    if not secret.startswith(API_TOKEN_PREFIX):
        return None
    token = (
        ApiToken.objects.select_related("user", "application", "environment")
        .filter(token_hash=hash_token(secret))
        .first()
    )
    now = timezone.now()
    if token is None or not token.is_usable(now):
        return None
    if not holds(token.user, token.role, token.application_id, token.environment_id):
        return None
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_WRITE:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def acting_user(token: ApiToken) -> User:
    """The user a request made with `token` acts as: the token's user, holding the token's role
    only, where the token says (apps.accounts.roles reads the two lists set here), never a
    superuser's powers, and named in the audit log as the token of that user."""
    user = copy.copy(token.user)
    user.is_superuser = False
    everywhere = token.application_id is None and token.environment_id is None
    user._role_names = [token.role] if everywhere else []
    user._scoped_grants = (
        [] if everywhere else [(token.role, token.application_id, token.environment_id)]
    )
    user.audit_name = f"token {token.name} of {token.user.email}"
    user.api_token = token

    def refuse_save(*args, **kwargs):
        raise RuntimeError("a user acting through an API token is never saved")

    user.save = refuse_save
    return user
