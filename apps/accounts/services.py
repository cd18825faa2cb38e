"""Giving and taking roles (the admin's user page and `manage.py grant_role` both come here);
what a login and a token refresh add to simplejwt's own work: the entry in the audit log, the
login throttle, and the password stamp that every token carries."""

import math
import random
import time

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.crypto import salted_hmac
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.tokens import RefreshToken

from apps.accounts.models import EndedSession, LoginAttempts, ScopedRole, User
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
    not empty. A user with a role may enter the admin (_admit_to_admin)."""
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
    user.__dict__.pop("_role_names", None)
    _admit_to_admin(user, bool(wanted))
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


def scoped_grants(user: User) -> list[dict]:
    """The roles the user holds in part of the fleet, as /login tells them."""
    return [
        {
            "role": grant.role,
            "application": grant.application.name if grant.application_id else None,
            "environment": grant.environment.name if grant.environment_id else None,
        }
        for grant in user.scoped_roles.select_related("application", "environment").order_by(
            "role", "application__name", "environment__name"
        )
    ]


def _admit_to_admin(user: User, global_roles: bool | None = None) -> None:
    """A user with a role, everywhere or in part of the fleet, may enter the admin (is_staff);
    one without none, unless a superuser, who needs no role. Each admin page then asks for the
    role in the scope it acts on."""
    if global_roles is None:
        global_roles = user.groups.filter(name__in=ROLES).exists()
    staff = global_roles or user.is_superuser or ScopedRole.objects.filter(user=user).exists()
    if user.is_staff != staff:
        user.is_staff = staff
        user.save(update_fields=["is_staff"])


def grant_scoped_role(
    user: User,
    role: str,
    *,
    application=None,
    environment=None,
    acting_user=None,
    source_ip: str | None = None,
) -> bool:
    """Give the user `role` in one application, one environment, or one application's
    environment (Application and Environment rows, at least one). Returns whether it is new;
    audited as roles.changed."""
    if role not in ROLES:
        raise UnknownRole(role)
    if application is None and environment is None:
        raise ValueError("a scoped role names an application, an environment or both")
    with transaction.atomic():
        User.objects.select_for_update().get(pk=user.pk)  # one grant at a time per user
        grant, created = ScopedRole.objects.get_or_create(
            user=user, role=role, application=application, environment=environment
        )
        if created:
            record_event(
                AuditEntry.ROLES_CHANGED,
                actor=acting_user,
                source_ip=source_ip,
                target=f"user {user.email}",
                detail={"added": [role], "removed": [], "scope": grant.scope_label},
            )
        _admit_to_admin(user)
    user.__dict__.pop("_scoped_grants", None)
    return created


def take_scoped_role(grant: ScopedRole, *, acting_user=None, source_ip=None) -> None:
    """Take away one role held in part of the fleet; audited."""
    with transaction.atomic():
        label = grant.scope_label
        if ScopedRole.objects.filter(pk=grant.pk).delete()[0]:
            record_event(
                AuditEntry.ROLES_CHANGED,
                actor=acting_user,
                source_ip=source_ip,
                target=f"user {grant.user.email}",
                detail={"added": [], "removed": [grant.role], "scope": label},
            )
        _admit_to_admin(grant.user)
    grant.user.__dict__.pop("_scoped_grants", None)


def take_scoped_roles(
    user: User, *, application=None, environment=None, acting_user=None, source_ip=None
) -> list[str]:
    """Take away every role the user holds in exactly that part of the fleet; audited."""
    with transaction.atomic():
        grants = ScopedRole.objects.filter(
            user=user, application=application, environment=environment
        )
        held = set(grants.values_list("role", flat=True))
        removed = [role for role in ROLES if role in held]
        if removed:
            label = grants.first().scope_label
            grants.delete()
            record_event(
                AuditEntry.ROLES_CHANGED,
                actor=acting_user,
                source_ip=source_ip,
                target=f"user {user.email}",
                detail={"added": [], "removed": removed, "scope": label},
            )
        _admit_to_admin(user)
    user.__dict__.pop("_scoped_grants", None)
    return removed


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


# The JWT claim that ties a token to the password it was issued under.
PASSWORD_CLAIM = "pwd"  # noqa: S105 - a claim name, not a secret
# The login session a token belongs to: the same in every token from one login, across refreshes.
SESSION_CLAIM = "sid"
_PURGE_CHANCE = 0.01


def login_subjects(*, ip: str | None, email: str) -> list[str]:
    """What a login attempt counts against: the client address and the account tried."""
    subjects = [f"account:{email.strip().lower()[:250]}"]
    if ip:
        subjects.append(f"ip:{ip}")
    return subjects


def reserve_login(subjects: list[str]) -> int | None:
    """Count one attempt against each subject before the password is checked; None when it may
    go ahead, else the seconds until the window of a subject over the limit ends.

    Counting before checking is what makes the limit hold under concurrency: of N parallel
    guesses exactly LOGIN_FAILURE_LIMIT reach the password check. A login that succeeds gives
    its count back (release_login); one refused here gives back the counts it took elsewhere.
    """
    now = time.time()
    waits = []
    for subject in subjects:
        attempts, window_ends = _count_attempt(subject, now)
        if attempts > settings.LOGIN_FAILURE_LIMIT:
            waits.append(window_ends - now)
    if random.random() < _PURGE_CHANCE:
        # Windows that have closed are only history; dropping them keeps the table small.
        LoginAttempts.objects.filter(window_ends__lt=now).delete()
    if not waits:
        return None
    release_login(subjects)
    return max(1, math.ceil(max(waits)))


def release_login(subjects: list[str]) -> None:
    """Give back the attempts reserve_login counted (the login succeeded, or never ran)."""
    # One row per statement, in the order reserve_login counted them: a single UPDATE of both
    # rows may lock them in either order (its scan follows where the rows lie on disk), and two
    # such at once can deadlock.
    for subject in subjects:
        LoginAttempts.objects.filter(subject=subject, attempts__gt=0).update(
            attempts=F("attempts") - 1
        )


# One statement, so that two processes counting at once cannot both read the old count: insert
# the first attempt of a window, or add one to the open window. PostgreSQL and SQLite both run
# INSERT ... ON CONFLICT ... RETURNING; the ORM has no conditional upsert.
_COUNT_ATTEMPT = """
    INSERT INTO login_attempts (subject, attempts, window_ends) VALUES (%s, 1, %s)
    ON CONFLICT (subject) DO UPDATE SET
        attempts = CASE WHEN login_attempts.window_ends > %s
            THEN login_attempts.attempts + 1 ELSE 1 END,
        window_ends = CASE WHEN login_attempts.window_ends > %s
            THEN login_attempts.window_ends ELSE excluded.window_ends END
    RETURNING attempts, window_ends
"""


def _count_attempt(subject: str, now: float) -> tuple[int, float]:
    with connection.cursor() as cursor:
        cursor.execute(_COUNT_ATTEMPT, [subject, now + settings.LOGIN_FAILURE_WINDOW, now, now])
        attempts, window_ends = cursor.fetchone()
    return attempts, window_ends


def password_stamp(user) -> str:
    """Changes whenever the user's password changes (API, admin or changepassword), so a token
    carrying the old stamp is refused."""
    return salted_hmac("apps.accounts.password-stamp", user.password).hexdigest()[:20]


def issue_tokens(user, *, session: str | None = None) -> RefreshToken:
    """A refresh token (its .access_token is the access token) bound to the current password
    and to a login session: a login starts one, a refresh carries it on (`session`), and
    POST /logout ends it, with every access token issued in it (end_session)."""
    refresh = RefreshToken.for_user(user)
    refresh[PASSWORD_CLAIM] = password_stamp(user)
    refresh[SESSION_CLAIM] = session or refresh[api_settings.JTI_CLAIM]
    return refresh


def end_session(refresh: RefreshToken) -> None:
    """Refuse every access token of the refresh token's session from now on. An access token
    lives ACCESS_TOKEN_LIFETIME at most, so the session is remembered that long; rows whose
    time has passed are purged here, so the table holds only the sessions ended lately."""
    session = refresh.get(SESSION_CLAIM)
    if not session:
        return  # issued before sessions existed: its access tokens expire within the lifetime
    now = timezone.now()
    EndedSession.objects.filter(ends_at__lt=now).delete()
    lifetime = settings.SIMPLE_JWT["ACCESS_TOKEN_LIFETIME"]
    EndedSession.objects.get_or_create(session=session, defaults={"ends_at": now + lifetime})
