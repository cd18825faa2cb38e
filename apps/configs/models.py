import uuid

from django.conf import settings
from django.db import models

from apps.scopes.services import default_scope_id


class ConfigVersion(models.Model):
    """One immutable version of the configuration; the newest one is the current config."""

    uuid = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    scope = models.ForeignKey(
        "scopes.Scope", on_delete=models.PROTECT, related_name="+", default=default_scope_id
    )
    # Numbered from 1 in each scope.
    version = models.PositiveIntegerField()
    config_url = models.CharField(max_length=2048)
    pooling_interval = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The version this one copies when it was made by a rollback.
    rolled_back_from = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        db_table = "config"
        ordering = ["-version"]
        get_latest_by = "version"
        constraints = [
            models.UniqueConstraint(fields=["scope", "version"], name="config_version_per_scope")
        ]

    def __str__(self) -> str:
        return f"v{self.version}: {self.config_url} every {self.pooling_interval}s"

    def same_content(self, config_url: str, pooling_interval: int) -> bool:
        return self.config_url == config_url and self.pooling_interval == pooling_interval
