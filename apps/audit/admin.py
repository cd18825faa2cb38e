from django.contrib import admin
from django.utils.html import format_html_join

from apps.audit.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """Read-only: the log is written by the services and nobody edits or deletes it."""

    list_display = ["at", "action", "actor", "source_ip", "target"]
    list_filter = ["action"]
    search_fields = ["actor", "target", "source_ip", "action"]
    date_hierarchy = "at"
    fields = ["at", "action", "actor", "source_ip", "target", "details"]
    readonly_fields = fields
    list_per_page = 50

    @admin.display(description="detail")
    def details(self, obj: AuditEntry) -> str:
        return format_html_join(
            "\n", "<div><strong>{}</strong>: {}</div>", sorted(obj.detail.items())
        )

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
