"""Applications, environments and the scopes they make: finding a scope by its names, making
and changing applications and environments (each audited in its transaction), and the default
scope the seed's routes act on."""

from django.conf import settings
from django.db import IntegrityError, transaction

from apps.audit.models import AuditEntry
from apps.audit.services import record_event
from apps.scopes.errors import NameTaken, UnknownApplication, UnknownEnvironment
from apps.scopes.models import Application, Environment, Scope

# Scopes are never deleted (PROTECT) and their names never change, so a process may keep the
# default scope's row once it has read it.
_default: Scope | None = None


def default_scope() -> Scope:
    """The scope of DEFAULT_APPLICATION in DEFAULT_ENVIRONMENT: where the seed's routes act and
    where a controller's data went on its upgrade. Made on first use when the settings name a
    scope that does not exist yet."""
    global _default
    wanted = (settings.DEFAULT_APPLICATION, settings.DEFAULT_ENVIRONMENT)
    if _default is not None and (_default.application.name, _default.environment.name) == wanted:
        return _default
    application, _ = Application.objects.get_or_create(name=wanted[0])
    environment, _ = Environment.objects.get_or_create(
        name=wanted[1], defaults={"approvals_required": settings.CONFIG_APPROVALS_REQUIRED}
    )
    scope, _ = Scope.objects.select_related("application", "environment").get_or_create(
        application=application, environment=environment
    )
    _default = scope
    return scope


def forget_default_scope() -> None:
    """For tests that change DEFAULT_APPLICATION or DEFAULT_ENVIRONMENT, or empty the tables."""
    global _default
    _default = None
    _names.clear()


def get_application(name: str) -> Application:
    try:
        return Application.objects.get(name=name)
    except Application.DoesNotExist:
        raise UnknownApplication(name) from None


def get_environment(name: str) -> Environment:
    try:
        return Environment.objects.get(name=name)
    except Environment.DoesNotExist:
        raise UnknownEnvironment(name) from None


def get_scope(application: str, environment: str) -> Scope:
    """The scope of two names; UnknownApplication or UnknownEnvironment (404) says which name
    is unknown. Every application is in every environment (each is made with its scopes)."""
    scope = (
        Scope.objects.select_related("application", "environment")
        .filter(application__name=application, environment__name=environment)
        .first()
    )
    if scope is None:
        get_application(application)
        get_environment(environment)
        raise UnknownEnvironment(environment)
    return scope


def named_scope(application: str | None, environment: str | None) -> Scope:
    """The scope a command's options or a request's body name, each name the default's when left
    out (the default scope, made if missing, when both are)."""
    if application is None and environment is None:
        return default_scope()
    return get_scope(
        application or settings.DEFAULT_APPLICATION, environment or settings.DEFAULT_ENVIRONMENT
    )


def create_application(
    name: str, *, description: str = "", actor=None, source_ip: str | None = None
) -> Application:
    """A new application, present in every environment at once."""
    try:
        with transaction.atomic():
            application = Application.objects.create(name=name, description=description)
            Scope.objects.bulk_create(
                [
                    Scope(application=application, environment=environment)
                    for environment in Environment.objects.all()
                ]
            )
            record_event(
                AuditEntry.APPLICATION_CREATED,
                actor=actor,
                source_ip=source_ip,
                target=f"application:{name}",
                detail={"description": description},
            )
    except IntegrityError:
        raise NameTaken("application", name) from None
    return application


def change_application(
    application: Application, *, description: str, actor=None, source_ip: str | None = None
) -> Application:
    with transaction.atomic():
        before = application.description
        application.description = description
        application.save(update_fields=["description"])
        if before != description:
            record_event(
                AuditEntry.APPLICATION_CHANGED,
                actor=actor,
                source_ip=source_ip,
                target=f"application:{application.name}",
                detail={"description": {"before": before, "after": description}},
            )
    return application


POLICY_FIELDS = ("order", "approvals_required", "default_rollout")


def create_environment(
    name: str, *, actor=None, source_ip: str | None = None, **policy
) -> Environment:
    """A new environment, in which every application is present at once. `policy` holds any of
    POLICY_FIELDS; approvals_required defaults to CONFIG_APPROVALS_REQUIRED."""
    policy.setdefault("approvals_required", settings.CONFIG_APPROVALS_REQUIRED)
    try:
        with transaction.atomic():
            environment = Environment.objects.create(name=name, **policy)
            Scope.objects.bulk_create(
                [
                    Scope(application=application, environment=environment)
                    for application in Application.objects.all()
                ]
            )
            record_event(
                AuditEntry.ENVIRONMENT_CREATED,
                actor=actor,
                source_ip=source_ip,
                target=f"environment:{name}",
                detail={field: getattr(environment, field) for field in POLICY_FIELDS},
            )
    except IntegrityError:
        raise NameTaken("environment", name) from None
    return environment


def change_environment(
    environment: Environment, *, actor=None, source_ip: str | None = None, **policy
) -> Environment:
    """Change any of POLICY_FIELDS; the audit entry keeps each changed field's before and
    after. Takes effect for the next change made there."""
    with transaction.atomic():
        changed = {
            field: {"before": getattr(environment, field), "after": value}
            for field, value in policy.items()
            if getattr(environment, field) != value
        }
        for field, value in policy.items():
            setattr(environment, field, value)
        if policy:
            environment.save(update_fields=list(policy))
        if changed:
            record_event(
                AuditEntry.ENVIRONMENT_CHANGED,
                actor=actor,
                source_ip=source_ip,
                target=f"environment:{environment.name}",
                detail=changed,
            )
    return environment


# Names never change and scopes are never deleted: each process keeps what it has read.
_names: dict[int, tuple[str, str]] = {}


def scope_names(scope_id: int) -> tuple[str, str]:
    """(application, environment) of a scope by its id, as the audit log records it."""
    names = _names.get(scope_id)
    if names is None:
        scope = Scope.objects.select_related("application", "environment").get(pk=scope_id)
        names = _names[scope_id] = (scope.application.name, scope.environment.name)
    return names


def policy_of(scope_id: int) -> Environment:
    """The rules of the scope's environment, read afresh: an operator may have changed them
    since this process last looked."""
    return Environment.objects.get(scopes__pk=scope_id)


def default_scope_id() -> int:
    """The default of every scoped row's scope: a row made without naming one (the seed's
    routes, a command) belongs to the default scope."""
    return default_scope().pk
