"""The admin's pages of webhooks: the endpoints with their recent deliveries, every delivery
with its tries, and the operator's two actions, "send a test event" and "send again". Endpoints
are made, changed and deleted through the API (POST /webhooks answers the secret, once)."""

from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from apps.accounts.roles import OPERATOR, has_role
from apps.webhooks import services
from apps.webhooks.models import Delivery, WebhookEndpoint
from controller_site.admin_site import HistoryAdmin

# How many of an endpoint's latest deliveries its page lists.
RECENT_DELIVERIES = 20


class OperatorActions(HistoryAdmin):
    """Read-only pages; the actions are an operator's."""

    def has_send_permission(self, request) -> bool:
        return has_role(request.user, OPERATOR)


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(OperatorActions):
    list_display = [
        "__str__",
        "url",
        "event_list",
        "applications",
        "environments",
        "enabled",
        "failing_since",
        "pending",
        "description",
    ]
    list_filter = ["enabled"]
    search_fields = ["url", "description"]
    # Never the secret.
    fields = [
        "url",
        "event_list",
        "applications",
        "environments",
        "enabled",
        "description",
        "created_at",
        "created_by",
        "failing_since",
        "disabled_reason",
        "previous_secret_expires_at",
        "recent_deliveries",
    ]
    readonly_fields = fields
    actions = ["send_test_event"]

    @admin.display(description="events")
    def event_list(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.events)

    @admin.display(description="pending deliveries")
    def pending(self, obj: WebhookEndpoint) -> int:
        return obj.deliveries.filter(state=Delivery.PENDING).count()

    @admin.display(description="recent deliveries")
    def recent_deliveries(self, obj: WebhookEndpoint) -> str:
        rows = obj.deliveries.order_by("-id")[:RECENT_DELIVERIES]
        if not rows:
            return "—"
        return format_html(
            "<table><tr><th>event</th><th>status</th><th>response</th><th>created</th>"
            "<th>attempts</th><th>last try</th><th>next try</th></tr>{}</table>",
            format_html_join(
                "",
                '<tr><td><a href="../../../delivery/{}/change/">{}</a></td><td>{}</td><td>{}</td>'
                "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        row.pk,
                        row.event_type,
                        row.state,
                        row.response_code or row.last_error or "—",
                        f"{row.created_at:%Y-%m-%d %H:%M:%S}",
                        row.attempts,
                        f"{row.last_attempt_at:%H:%M:%S}" if row.last_attempt_at else "—",
                        f"{row.next_attempt_at:%Y-%m-%d %H:%M:%S}"
                        if row.state == Delivery.PENDING
                        else "—",
                    )
                    for row in rows
                ),
            ),
        )

    @admin.action(description="Send a test event", permissions=["send"])
    def send_test_event(self, request, queryset):
        for endpoint in queryset:
            services.send_test_event(endpoint, actor=request.user)
        self.message_user(
            request, f"A webhook.test event is on its way to {len(queryset)} endpoint(s)."
        )


@admin.register(Delivery)
class DeliveryAdmin(OperatorActions):
    list_display = [
        "event_type",
        "endpoint",
        "application",
        "environment",
        "state",
        "response_code",
        "created_at",
        "attempts",
        "last_attempt_at",
        "next_try",
        "last_error",
    ]
    list_filter = ["state", "event_type", "endpoint"]
    search_fields = ["event_id"]
    list_select_related = ["endpoint"]
    readonly_fields = [
        "endpoint",
        "event_id",
        "event_type",
        "application",
        "environment",
        "state",
        "attempts",
        "created_at",
        "last_attempt_at",
        "next_attempt_at",
        "response_code",
        "last_error",
        "delivered_at",
        "body",
    ]
    fields = readonly_fields
    actions = ["send_again"]

    @admin.display(description="next try")
    def next_try(self, obj: Delivery):
        return obj.next_attempt_at if obj.state == Delivery.PENDING else None

    @admin.action(description="Send again", permissions=["send"])
    def send_again(self, request, queryset):
        deliveries = list(queryset)
        for delivery in deliveries:
            services.send_again(delivery)
        self.message_user(
            request,
            f"{len(deliveries)} deliveries are sent again, with their webhook-id.",
            messages.SUCCESS,
        )
