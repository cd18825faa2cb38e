"""The Django admin as the operator's console: a dashboard on the index page, and the client
address of every admin request made known to the audit log."""

from functools import wraps

from django.contrib import admin
from django.utils import timezone

from apps.accounts.roles import EDITOR, OPERATOR, has_role, roles_of
from apps.agents.models import Agent
from apps.agents.services import STATUSES, count_by_status
from apps.audit.models import AuditEntry
from apps.audit.signals import admin_request_ip
from apps.changes.models import ChangeRequest
from apps.configs.services import get_current_config, state_of
from apps.rollouts.models import Rollout
from apps.rollouts.status import get_latest_rollout, measure
from apps.scopes.services import default_scope
from apps.scopes.status import matrix
from controller_site.request_info import client_ip

# How many of the latest changes the dashboard lists: changes to the configuration, revocations
# and edits in the admin. Logins and registrations are routine and stay in the audit log.
DASHBOARD_CHANGES = 10


class ControllerAdminSite(admin.AdminSite):
    site_header = "Distributed Configuration"
    site_title = "Distributed Configuration admin"
    index_title = "Operations"
    index_template = "admin/dashboard.html"

    def admin_view(self, view, cacheable=False):
        protected = super().admin_view(view, cacheable)

        # Django records admin changes as LogEntry rows, which carry no request; the audit
        # receiver reads the address from here while the view runs.
        @wraps(protected)
        def with_client_ip(request, *args, **kwargs):
            token = admin_request_ip.set(client_ip(request))
            try:
                return protected(request, *args, **kwargs)
            finally:
                admin_request_ip.reset(token)

        return with_client_ip

    def login(self, request, extra_context=None):
        # The login throttle (apps.accounts.backends) counts admin logins with the API's; when
        # it refused the attempt, say so with 429 rather than as a wrong password.
        from apps.accounts.backends import RETRY_AFTER_ATTRIBUTE

        response = super().login(request, extra_context)
        wait = getattr(request, RETRY_AFTER_ATTRIBUTE, None)
        if wait is None:
            return response
        form = getattr(response, "context_data", {}).get("form")
        if form is not None:
            form.errors.clear()
            form.add_error(None, f"Too many failed logins; try again in {wait} s.")
        response.status_code = 429
        response["Retry-After"] = str(wait)
        return response

    def index(self, request, extra_context=None):
        return super().index(request, {**dashboard_context(request), **(extra_context or {})})


def dashboard_context(request) -> dict:
    """The dashboard: the matrix of every scope, then the default scope's configuration,
    rollout, change requests and agents."""
    scope = default_scope()
    config = get_current_config(scope.pk)
    rollout = get_latest_rollout(scope.pk)
    # A halt stays in view while the version it put everyone back on is current.
    halted = (
        rollout
        if rollout is not None
        and rollout.state == Rollout.HALTED
        and config is not None
        and config.version == rollout.version + 1
        else None
    )
    if rollout is not None and rollout.state not in Rollout.SPLIT_STATES:
        rollout = None
    if rollout is not None:
        rollout.measured = measure(rollout)
    state = state_of(config, scope.pk)
    counts = count_by_status(state, timezone.now(), Agent.objects.filter(scope=scope))
    changes = AuditEntry.objects.filter(
        action__in=[
            AuditEntry.CONFIG_CREATED,
            AuditEntry.CONFIG_UPDATED,
            AuditEntry.CONFIG_ROLLED_BACK,
            AuditEntry.ROLLOUT_STARTED,
            AuditEntry.ROLLOUT_PROMOTED,
            AuditEntry.ROLLOUT_PAUSED,
            AuditEntry.ROLLOUT_RESUMED,
            AuditEntry.ROLLOUT_COMPLETED,
            AuditEntry.ROLLOUT_ABORTED,
            AuditEntry.ROLLOUT_HALTED,
            AuditEntry.CONFIG_EMERGENCY,
            AuditEntry.AGENT_REVOKED,
            AuditEntry.ADMIN_ADDED,
            AuditEntry.ADMIN_CHANGED,
            AuditEntry.ADMIN_DELETED,
        ]
    )[:DASHBOARD_CHANGES]
    # An emergency publish stays visible while its version is current.
    emergency = (
        AuditEntry.objects.filter(
            action=AuditEntry.CONFIG_EMERGENCY,
            target=f"config v{config.version}",
            application=scope.application.name,
            environment=scope.environment.name,
        ).first()
        if config
        else None
    )
    return {
        "current_config": config,
        "active_rollout": rollout,
        "halted_rollout": halted,
        "current_emergency": emergency,
        "pending_changes": ChangeRequest.objects.filter(
            scope=scope, state=ChangeRequest.PENDING
        ).count(),
        "fleet": [(status, status.replace("_", " "), counts[status]) for status in STATUSES],
        "fleet_total": sum(counts.values()),
        "recent_changes": list(changes),
        # Buttons lead only where the user may act.
        "can_publish": has_role(request.user, EDITOR),
        "can_operate": has_role(request.user, OPERATOR),
        "my_roles": roles_of(request.user),
        "scope_matrix": matrix(),
        "default_scope": scope,
    }


class HistoryAdmin(admin.ModelAdmin):
    """A model that is a record (config versions, the audit log): shown, never edited, added
    to or deleted through the admin. New entries come only from the service functions."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
