from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "apps.agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps.agents import schema  # noqa: F401 - registers the OpenAPI auth extension
