from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    name = "apps.rollouts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Every publish, whoever makes it, passes the rollout's guard and may start one.
        from apps.configs.services import published, publishing
        from apps.rollouts.services import guard_publish, start_rollout_of_plan

        publishing.connect(guard_publish, dispatch_uid="rollouts.guard_publish")
        published.connect(start_rollout_of_plan, dispatch_uid="rollouts.start_rollout")
