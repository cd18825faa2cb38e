"""What the migrations that brought scopes in run: the rows of a controller from before
applications and environments all go to the default scope. Historical models only (the `apps`
a migration passes), so that these keep working whatever the models become."""

from django.conf import settings

# The audit actions about a scope's configuration, agents and rollouts, whose entries from
# before are the default scope's; logins, roles and admin edits belong to no scope.
SCOPED_ACTION_PREFIXES = ("config.", "rollout.", "change.", "agent.", "registration_token.")


def default_scope_of(apps):
    Scope = apps.get_model("scopes", "Scope")
    return Scope.objects.get(
        application__name=settings.DEFAULT_APPLICATION,
        environment__name=settings.DEFAULT_ENVIRONMENT,
    )


def move_to_default_scope(app_label: str, model_name: str):
    """A RunPython step setting the scope of every row of the model that has none."""

    def move(apps, schema_editor):
        model = apps.get_model(app_label, model_name)
        model.objects.filter(scope__isnull=True).update(scope=default_scope_of(apps))

    return move


def name_default_scope_in_audit(apps, schema_editor):
    AuditEntry = apps.get_model("audit", "AuditEntry")
    scope = default_scope_of(apps)
    for prefix in SCOPED_ACTION_PREFIXES:
        AuditEntry.objects.filter(action__startswith=prefix).update(
            application=scope.application.name, environment=scope.environment.name
        )
