from django.contrib import admin
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from apps.accounts.views import LoginView, LogoutView, RefreshView
from apps.agents.views import (
    AgentListView,
    AgentRevokeView,
    AgentView,
    HeartbeatView,
    RegisterAgentView,
    RegistrationTokenView,
)
from apps.audit.views import AuditLogView
from apps.changes.views import (
    ApproveChangeView,
    CancelChangeView,
    ChangeDetailView,
    ChangeListView,
    RejectChangeView,
)
from apps.configs.views import (
    AgentPreflightResultView,
    ConfigAdminView,
    ConfigAgentView,
    ConfigHistoryView,
    ConfigRollbackView,
    ConfigStreamView,
    ConfigVersionView,
    PreflightView,
)
from apps.ops.views import healthz, metrics, readyz
from apps.rollouts.views import (
    RolloutAbortView,
    RolloutPauseView,
    RolloutPromoteView,
    RolloutResumeView,
    RolloutView,
)
from apps.scopes.views import (
    ApplicationListView,
    ApplicationView,
    EnvironmentListView,
    EnvironmentView,
)

handler403 = "apps.accounts.views.permission_denied"
handler500 = "controller_site.errors.server_error"

urlpatterns = [
    path("login", LoginView.as_view(), name="login"),
    path("login/refresh", RefreshView.as_view(), name="login-refresh"),
    path("logout", LogoutView.as_view(), name="logout"),
    path("config/admin", ConfigAdminView.as_view(), name="config-admin"),
    path("config/admin/history", ConfigHistoryView.as_view(), name="config-history"),
    path("config/admin/rollback", ConfigRollbackView.as_view(), name="config-rollback"),
    path("config/admin/rollout", RolloutView.as_view(), name="rollout"),
    path("config/admin/rollout/promote", RolloutPromoteView.as_view(), name="rollout-promote"),
    path("config/admin/rollout/pause", RolloutPauseView.as_view(), name="rollout-pause"),
    path("config/admin/rollout/resume", RolloutResumeView.as_view(), name="rollout-resume"),
    path("config/admin/rollout/abort", RolloutAbortView.as_view(), name="rollout-abort"),
    path("config/admin/preflight", PreflightView.as_view(), name="config-preflight"),
    path("config/admin/changes", ChangeListView.as_view(), name="changes"),
    path("config/admin/changes/<int:change_id>", ChangeDetailView.as_view(), name="change"),
    path(
        "config/admin/changes/<int:change_id>/approve",
        ApproveChangeView.as_view(),
        name="change-approve",
    ),
    path(
        "config/admin/changes/<int:change_id>/reject",
        RejectChangeView.as_view(),
        name="change-reject",
    ),
    path(
        "config/admin/changes/<int:change_id>/cancel",
        CancelChangeView.as_view(),
        name="change-cancel",
    ),
    path("config/version", ConfigVersionView.as_view(), name="config-version"),
    path("config/stream", ConfigStreamView.as_view(), name="config-stream"),
    path("config/agent", ConfigAgentView.as_view(), name="config-agent"),
    path("agent/admin", RegistrationTokenView.as_view(), name="registration-token"),
    path("agent/register", RegisterAgentView.as_view(), name="agent-register"),
    path("agent/heartbeat", HeartbeatView.as_view(), name="agent-heartbeat"),
    path("agent/preflight", AgentPreflightResultView.as_view(), name="agent-preflight"),
    path("agents", AgentListView.as_view(), name="agents"),
    path("agents/<uuid:agent_id>", AgentView.as_view(), name="agent"),
    path("agents/<uuid:agent_id>/revoke", AgentRevokeView.as_view(), name="agent-revoke"),
    path("audit", AuditLogView.as_view(), name="audit"),
    path("apps", ApplicationListView.as_view(), name="applications"),
    path("apps/<str:application>", ApplicationView.as_view(), name="application"),
    path("envs", EnvironmentListView.as_view(), name="environments"),
    path("envs/<str:environment>", EnvironmentView.as_view(), name="environment"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("admin/", admin.site.urls),
]
