from django.contrib import admin

from apps.configs.models import ConfigVersion


@admin.register(ConfigVersion)
class ConfigVersionAdmin(admin.ModelAdmin):
    """Versions are history: nobody edits or deletes one; changes make a new version."""

    list_display = ["version", "config_url", "pooling_interval", "created_by", "created_at"]
    search_fields = ["config_url"]
    readonly_fields = [f.name for f in ConfigVersion._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
