from django.contrib import admin
from django.utils.html import format_html_join

from apps.audit.models import AuditEntry
from controller_site.admin_site import HistoryAdmin


@admin.register(AuditEntry)
class AuditEntryAdmin(HistoryAdmin):
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
