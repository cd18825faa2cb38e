from django.contrib import admin
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from apps.accounts.token_views import TokenListView, TokenView
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
    CancelScheduledView,
    ChangeDetailView,
    ChangeListView,
    RejectChangeView,
    ScheduledDetailView,
    ScheduledListView,
)
from apps.configs.views import (
    AgentPreflightResultView,
    ConfigAdminView,
    ConfigAgentView,
    ConfigHistoryView,
    ConfigPromoteView,
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
    ApplicationCompareView,
    ApplicationListView,
    ApplicationView,
    EnvironmentListView,
    EnvironmentView,
)
from apps.webhooks.views import (
    WebhookListView,
    WebhookRotateSecretView,
    WebhookTestView,
    WebhookView,
)

handler403 = "apps.accounts.views.permission_denied"
handler500 = "controller_site.errors.server_error"

# The routes that act on one scope: the seed's paths act on the default scope, and each has a
# twin under /apps/{application}/envs/{environment}/ acting on that scope (apps.scopes.views).
SCOPED = [
    ("config/admin", ConfigAdminView, "config-admin"),
    ("config/admin/history", ConfigHistoryView, "config-history"),
    ("config/admin/rollback", ConfigRollbackView, "config-rollback"),
    ("config/admin/promote", ConfigPromoteView, "config-promote"),
    ("config/admin/rollout", RolloutView, "rollout"),
    ("config/admin/rollout/promote", RolloutPromoteView, "rollout-promote"),
    ("config/admin/rollout/pause", RolloutPauseView, "rollout-pause"),
    ("config/admin/rollout/resume", RolloutResumeView, "rollout-resume"),
    ("config/admin/rollout/abort", RolloutAbortView, "rollout-abort"),
    ("config/admin/preflight", PreflightView, "config-preflight"),
    ("config/admin/changes", ChangeListView, "changes"),
    ("config/admin/changes/<int:change_id>", ChangeDetailView, "change"),
    ("config/admin/changes/<int:change_id>/approve", ApproveChangeView, "change-approve"),
    ("config/admin/changes/<int:change_id>/reject", RejectChangeView, "change-reject"),
    ("config/admin/changes/<int:change_id>/cancel", CancelChangeView, "change-cancel"),
    ("config/admin/scheduled", ScheduledListView, "scheduled-changes"),
    ("config/admin/scheduled/<int:scheduled_id>", ScheduledDetailView, "scheduled-change"),
    (
        "config/admin/scheduled/<int:scheduled_id>/cancel",
        CancelScheduledView,
        "scheduled-change-cancel",
    ),
    ("agent/admin", RegistrationTokenView, "registration-token"),
    ("agents", AgentListView, "agents"),
    ("agents/<uuid:agent_id>", AgentView, "agent"),
    ("agents/<uuid:agent_id>/revoke", AgentRevokeView, "agent-revoke"),
]
SCOPE_PREFIX = "apps/<str:application>/envs/<str:environment>/"

urlpatterns = [
    path("login", LoginView.as_view(), name="login"),
    path("tokens", TokenListView.as_view(), name="tokens"),
    path("tokens/<int:token_id>", TokenView.as_view(), name="token"),
    path("login/refresh", RefreshView.as_view(), name="login-refresh"),
    path("logout", LogoutView.as_view(), name="logout"),
    *(path(route, view.as_view(), name=name) for route, view, name in SCOPED),
    *(
        path(SCOPE_PREFIX + route, view.as_view(), name=f"scoped-{name}")
        for route, view, name in SCOPED
    ),
    path("config/version", ConfigVersionView.as_view(), name="config-version"),
    path("config/stream", ConfigStreamView.as_view(), name="config-stream"),
    path("config/agent", ConfigAgentView.as_view(), name="config-agent"),
    path("agent/register", RegisterAgentView.as_view(), name="agent-register"),
    path("agent/heartbeat", HeartbeatView.as_view(), name="agent-heartbeat"),
    path("agent/preflight", AgentPreflightResultView.as_view(), name="agent-preflight"),
    path("audit", AuditLogView.as_view(), name="audit"),
    path("apps", ApplicationListView.as_view(), name="applications"),
    path("apps/<str:application>", ApplicationView.as_view(), name="application"),
    path(
        "apps/<str:application>/compare",
        ApplicationCompareView.as_view(),
        name="application-compare",
    ),
    path("envs", EnvironmentListView.as_view(), name="environments"),
    path("envs/<str:environment>", EnvironmentView.as_view(), name="environment"),
    path("webhooks", WebhookListView.as_view(), name="webhooks"),
    path("webhooks/<int:webhook_id>", WebhookView.as_view(), name="webhook"),
    path(
        "webhooks/<int:webhook_id>/rotate-secret",
        WebhookRotateSecretView.as_view(),
        name="webhook-rotate-secret",
    ),
    path("webhooks/<int:webhook_id>/test", WebhookTestView.as_view(), name="webhook-test"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("admin/", admin.site.urls),
]
