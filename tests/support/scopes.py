"""The default scope's environment as tests set its rules, and users holding a role in part of
the fleet."""

from apps.scopes.models import Application, Environment
from apps.scopes.services import default_scope


def set_approvals(required: int) -> None:
    """How many approvers the default scope's changes need, as an operator would set it."""
    Environment.objects.filter(pk=default_scope().environment_id).update(
        approvals_required=required
    )


def set_default_rollout(plan: dict | None) -> None:
    Environment.objects.filter(pk=default_scope().environment_id).update(default_rollout=plan)


def user_with(role: str, application: str | None = None, environment: str | None = None):
    """A new user holding `role` in the named application, environment or both."""
    from apps.accounts.models import User
    from apps.accounts.services import grant_scoped_role

    user = User.objects.create_user(email=f"{role}-{application}-{environment}@example.com")
    grant_scoped_role(
        user,
        role,
        application=application and Application.objects.get(name=application),
        environment=environment and Environment.objects.get(name=environment),
    )
    return user


TWO_BY_TWO = [(app, env) for app in ("payments", "search") for env in ("staging", "production")]


def make_two_by_two() -> dict:
    """payments and search (and the default application) in staging and production:
    {(application, environment): Scope}."""
    from apps.scopes.services import create_application, create_environment, get_scope

    default_scope()  # the migration made it; a transactional test before may have flushed it
    create_environment("staging", order=-10)
    for application in ("payments", "search"):
        create_application(application)
    return {names: get_scope(*names) for names in TWO_BY_TWO}
