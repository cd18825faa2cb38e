from django.apps import AppConfig


class ScopesConfig(AppConfig):
    name = "apps.scopes"
    verbose_name = "Applications and environments"
    default_auto_field = "django.db.models.BigAutoField"
