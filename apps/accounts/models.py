import uuid

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.utils import timezone

from apps.accounts.roles import ROLES


class UserManager(BaseUserManager):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra):
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra):
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """An administrator, who logs in by email (the seed's `admin` table)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    email = models.EmailField(unique=True)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        db_table = "admin"
        ordering = ["email"]

    def __str__(self) -> str:
        return self.email


class LoginAttempts(models.Model):
    """Login attempts counted in a fixed window for one subject: `ip:<address>` or
    `account:<email>`. Kept in the database, which every controller process shares and which is
    there with or without Redis, and incremented atomically (see services.reserve_login)."""

    subject = models.CharField(max_length=300, unique=True)
    attempts = models.PositiveIntegerField(default=0)
    # Unix time at which the window closes and the count starts again from zero.
    window_ends = models.FloatField()

    class Meta:
        db_table = "login_attempts"

    def __str__(self) -> str:
        return f"{self.subject}: {self.attempts}"


class EndedSession(models.Model):
    """A login session ended by POST /logout: access tokens carrying its id are refused until
    the last of them has expired (`ends_at`), after which the row is of no use and is purged."""

    session = models.CharField(max_length=64, unique=True)
    ends_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "ended_session"

    def __str__(self) -> str:
        return self.session


class ScopedRole(models.Model):
    """A role held in part of the fleet only: in one application (every environment of it), in
    one environment (of every application), or in one application's environment. A role held
    everywhere is a group membership instead (apps.accounts.roles)."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="scoped_roles")
    role = models.CharField(max_length=16, choices=[(role, role) for role in ROLES])
    application = models.ForeignKey(
        "scopes.Application", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    environment = models.ForeignKey(
        "scopes.Environment", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    granted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "scoped_role"
        ordering = ["user", "role"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(application__isnull=False) | models.Q(environment__isnull=False),
                name="scoped_role_names_a_scope",
            )
        ]

    def __str__(self) -> str:
        return f"{self.role} in {self.scope_label}"

    @property
    def scope_label(self) -> str:
        """`payments/staging`, `payments/*` or `*/production`."""
        application = self.application.name if self.application_id else "*"
        environment = self.environment.name if self.environment_id else "*"
        return f"{application}/{environment}"


class ApiToken(models.Model):
    """A token a pipeline uses on the admin API instead of a person's password: one role, in
    the whole fleet or part of it, never more than its user holds at the time of each call,
    until it expires or is revoked. Only its SHA-256 is stored."""

    name = models.CharField(max_length=100)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    role = models.CharField(max_length=16, choices=[(role, role) for role in ROLES])
    application = models.ForeignKey(
        "scopes.Application", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    environment = models.ForeignKey(
        "scopes.Environment", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_token"
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.user})"

    @property
    def scope_label(self) -> str:
        """`payments/staging`, `payments/*`, `*/production` or `*/*`."""
        application = self.application.name if self.application_id else "*"
        environment = self.environment.name if self.environment_id else "*"
        return f"{application}/{environment}"

    def is_usable(self, now) -> bool:
        return self.revoked_at is None and self.expires_at > now and self.user.is_active
