"""Change requests in the admin: the list, each request's page with its diff against the current
version, and the approve, reject and cancel buttons, through the same service functions as the
API; and the scheduled changes' list, with its cancel action."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html

from apps.accounts.roles import (
    ANY_ROLE,
    APPROVER,
    EDITOR,
    has_role,
    has_role_somewhere,
    role_needed_message,
)
from apps.changes import scheduling, services
from apps.changes.models import ChangeRequest, ScheduledChange
from controller_site.admin_site import HistoryAdmin
from controller_site.errors import ServiceError
from controller_site.request_info import client_ip

STATE_COLOURS = {
    ChangeRequest.PENDING: "#ef6c00",
    ChangeRequest.PUBLISHED: "#2e7d32",
    ChangeRequest.REJECTED: "#b71c1c",
    ChangeRequest.CANCELLED: "#6d6d6d",
    ChangeRequest.STALE: "#6d4c41",
    ChangeRequest.APPROVED: "#1565c0",
    ChangeRequest.EXPIRED: "#6d4c41",
}


@admin.register(ChangeRequest)
class ChangeRequestAdmin(HistoryAdmin):
    """Requests are made by the change form and decided by the buttons on their page; nobody
    edits or deletes one."""

    list_display = [
        "__str__",
        "scope",
        "state_badge",
        "author",
        "base_version",
        "config_url",
        "pooling_interval",
        "approval_count",
        "created_at",
        "published_version",
    ]
    list_filter = ["state", "scope"]
    search_fields = ["config_url", "author__email"]
    fields = [
        "state_badge",
        "author",
        "created_at",
        "base_version",
        "config_url",
        "pooling_interval",
        "rollout",
        "decided_by",
        "decided_at",
        "decision_comment",
        "published_version",
    ]
    readonly_fields = fields
    change_form_template = "admin/changes/changerequest/change_form.html"

    change_list_template = "admin/changes/changerequest/change_list.html"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("author", "decided_by")

    def changelist_view(self, request, extra_context=None):
        # Rollbacks, aborts and emergencies publish without a request: listed beside them so
        # that what skipped approval is seen where approvals are looked at.
        extra = {**(extra_context or {}), "bypasses": services.recent_bypasses()}
        return super().changelist_view(request, extra)

    @admin.display(description="state")
    def state_badge(self, obj: ChangeRequest) -> str:
        return format_html(
            '<span class="change-state state-{}" style="background:{};color:#fff;'
            'padding:2px 8px;border-radius:10px">{}</span>',
            obj.state,
            STATE_COLOURS[obj.state],
            obj.state,
        )

    @admin.display(description="approvals")
    def approval_count(self, obj: ChangeRequest) -> int:
        return obj.approvals.count()

    def get_urls(self):
        decisions = [
            path(
                f"<int:change_id>/{decision}/",
                self.admin_site.admin_view(getattr(self, f"{decision}_view")),
                name=f"changes_changerequest_{decision}",
            )
            for decision in ("approve", "reject", "cancel")
        ]
        return [*decisions, *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        change = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if change is not None:
            current_version, diff = services.diff_against_current(change)
            pending = change.state == ChangeRequest.PENDING
            own = change.author_id == request.user.pk
            extra.update(
                current_version=current_version,
                diff=diff,
                approvals=list(change.approvals.select_related("approver")),
                approvals_required=services.approvals_required(change.scope_id),
                can_approve=pending and not own and has_role(request.user, APPROVER, change.scope),
                can_cancel=pending
                and has_role(request.user, EDITOR, change.scope)
                and (own or request.user.is_superuser),
            )
        return super().change_view(request, object_id, form_url, extra)

    # The decisions --------------------------------------------------------------------------

    def approve_view(self, request, change_id: int):
        return self._decide(request, change_id, APPROVER, services.approve_change, "approver")

    def reject_view(self, request, change_id: int):
        return self._decide(request, change_id, APPROVER, services.reject_change, "approver")

    def cancel_view(self, request, change_id: int):
        return self._decide(request, change_id, EDITOR, services.cancel_change, "actor")

    def _decide(self, request, change_id: int, role: str, decide, who: str):
        if not has_role_somewhere(request.user, role):
            raise PermissionDenied(role_needed_message(role))
        change = ChangeRequest.objects.select_related("scope").filter(pk=change_id).first()
        if change is not None and not has_role(request.user, role, change.scope):
            raise PermissionDenied(role_needed_message(role))
        page = reverse("admin:changes_changerequest_change", args=[change_id])
        if request.method == "GET":
            return HttpResponseRedirect(page)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        comment = request.POST.get("comment", "").strip()[:1000]
        try:
            change = decide(
                change_id,
                scope_id=change.scope_id if change is not None else None,
                comment=comment,
                source_ip=client_ip(request),
                **{who: request.user},
            )
        except ServiceError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return HttpResponseRedirect(page)
        if change.state == ChangeRequest.PUBLISHED:
            message = f"Approved: {change} is published as version {change.published_version}."
        elif change.state == ChangeRequest.PENDING:
            message = f"Approved: {change} waits for more approvals."
        else:
            message = f"{change} is {change.state}."
        self.message_user(request, message)
        return HttpResponseRedirect(page)


SCHEDULED_COLOURS = {
    ScheduledChange.SCHEDULED: "#1565c0",
    ScheduledChange.PUBLISHED: "#2e7d32",
    ScheduledChange.STALE: "#6d4c41",
    ScheduledChange.CANCELLED: "#6d6d6d",
    ScheduledChange.EXPIRED: "#6d4c41",
    ScheduledChange.FAILED: "#b71c1c",
}


@admin.register(ScheduledChange)
class ScheduledChangeAdmin(HistoryAdmin):
    """Scheduled changes are made with `publish_at` on the API and decided by the job; here they
    are seen, and cancelled by their author or an operator of their scope."""

    list_display = [
        "__str__",
        "scope",
        "state_badge",
        "publish_at",
        "author",
        "base_version",
        "config_url",
        "pooling_interval",
        "change_request",
        "published_version",
    ]
    list_filter = ["state", "scope"]
    search_fields = ["config_url", "author__email"]
    fields = [
        "state_badge",
        "scope",
        "publish_at",
        "author",
        "created_at",
        "base_version",
        "config_url",
        "pooling_interval",
        "rollout",
        "change_request",
        "decided_by",
        "decided_at",
        "reason",
        "published_version",
    ]
    readonly_fields = fields
    actions = ["cancel_scheduled_changes"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("author", "change_request", "scope__application", "scope__environment")
        )

    @admin.display(description="state")
    def state_badge(self, obj: ScheduledChange) -> str:
        return format_html(
            '<span class="scheduled-state state-{}" style="background:{};color:#fff;'
            'padding:2px 8px;border-radius:10px">{}</span>',
            obj.state,
            SCHEDULED_COLOURS[obj.state],
            obj.state,
        )

    def has_cancel_permission(self, request) -> bool:
        """Offered to whoever reads the list: each change's author and its scope's operators
        are the ones it cancels for (the service decides, row by row)."""
        return has_role_somewhere(request.user, ANY_ROLE)

    @admin.action(description="Cancel selected scheduled changes", permissions=["cancel"])
    def cancel_scheduled_changes(self, request, queryset):
        cancelled, refused = 0, []
        for scheduled in queryset:
            try:
                scheduling.cancel_scheduled_change(
                    scheduled.pk,
                    scope_id=scheduled.scope_id,
                    actor=request.user,
                    source_ip=client_ip(request),
                )
                cancelled += 1
            except ServiceError as exc:
                refused.append(f"{scheduled}: {exc.detail}")
        if cancelled:
            self.message_user(request, f"Cancelled {cancelled} scheduled change(s).")
        if refused:
            self.message_user(request, " ".join(refused), messages.ERROR)
