from django.contrib import admin

from apps.agents.models import Agent, RegistrationToken


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "hostname", "applied_version", "last_seen", "revoked_at"]
    search_fields = ["id", "name", "hostname"]
    readonly_fields = [
        "id",
        "created_at",
        "last_seen",
        "applied_version",
        "workers",
        "revoked_at",
    ]
    exclude = ["token_hash"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(RegistrationToken)
class RegistrationTokenAdmin(admin.ModelAdmin):
    list_display = ["short_hash", "created_at", "expires_at", "used_at", "used_by", "created_by"]
    readonly_fields = ["created_at", "expires_at", "used_at", "used_by", "created_by"]
    exclude = ["token_hash"]

    @admin.display(description="token hash")
    def short_hash(self, obj: RegistrationToken) -> str:
        return obj.token_hash[:12] + "…"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
