from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate

from apps.ops.database import store_statement_timeout


class OpsConfig(AppConfig):
    name = "apps.ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        # `migrate` runs before every release's controllers start, so the stored timeout
        # follows DATABASE_STATEMENT_TIMEOUT from one release to the next. post_migrate is sent
        # once per app with models (this one has none): the configs app's stands for the run.
        post_migrate.connect(_store_statement_timeout, sender=apps.get_app_config("configs"))


def _store_statement_timeout(sender, using: str = "default", **kwargs) -> None:
    store_statement_timeout(using)
