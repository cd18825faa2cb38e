from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    name = "apps.rollouts"
    default_auto_field = "django.db.models.BigAutoField"
