"""Applications and environments in the admin: made and changed through the same service
functions as the API (so that each is present in every scope at once, and audited); and each
scope's page, where everything of one application in one environment meets."""

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from apps.accounts.roles import ANY_ROLE, EDITOR, OPERATOR, has_role, role_needed_message
from apps.agents.admin import BADGE_COLOURS
from apps.agents.services import STATUSES
from apps.changes.admin import STATE_COLOURS as CHANGE_COLOURS
from apps.rollouts.admin import STATE_COLOURS as ROLLOUT_COLOURS
from apps.rollouts.admin import controls_of, progress_context
from apps.rollouts.serializers import RolloutPlanSerializer
from apps.scopes import services
from apps.scopes.models import Application, Environment
from apps.scopes.status import describe_application, describe_scope_page
from controller_site.errors import NotFoundError
from controller_site.request_info import client_ip


class NoDeleteAdmin(admin.ModelAdmin):
    def has_delete_permission(self, request, obj=None) -> bool:
        # A scope's versions, agents and audit entries name it: it is never deleted.
        return False

    def get_readonly_fields(self, request, obj=None):
        # Names are in URLs, tokens' scopes and the audit log: fixed once made.
        return ("name", "created_at") if obj is not None else ("created_at",)


@admin.register(Application)
class ApplicationAdmin(NoDeleteAdmin):
    list_display = ("name", "description", "created_at")
    search_fields = ("name", "description")
    fields = ("name", "description", "created_at", "environments")

    def get_readonly_fields(self, request, obj=None):
        return (*super().get_readonly_fields(request, obj), "environments")

    @admin.display(description="In each environment")
    def environments(self, obj) -> str:
        if obj is None or obj.pk is None:
            return "Present in every environment once made."
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td>'
            "<td>{} in sync, {} behind, {} stale, {} revoked</td></tr>",
            (
                (
                    reverse("admin:scopes_scope", args=[obj.name, scope["environment"]]),
                    scope["environment"],
                    scope["current_version"] or "none yet",
                    scope["rollout_state"] or "—",
                    *(scope["agents"][status] for status in STATUSES),
                )
                for scope in describe_application(obj)
            ),
        )
        return format_html(
            '<table id="application-scopes"><thead><tr><th>Environment</th><th>Version</th>'
            "<th>Rollout</th><th>Agents</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    def get_urls(self):
        return [
            path(
                "<str:application>/envs/<str:environment>/",
                self.admin_site.admin_view(self.scope_view),
                name="scopes_scope",
            ),
            *super().get_urls(),
        ]

    def scope_view(self, request, application: str, environment: str):
        """One scope's page: read with a role held there (or everywhere), like the API's routes
        under /apps/{app}/envs/{env}/."""
        try:
            scope = services.get_scope(application, environment)
        except NotFoundError as exc:
            raise Http404(exc.detail) from None
        if not has_role(request.user, ANY_ROLE, scope):
            raise PermissionDenied(f"{role_needed_message(ANY_ROLE).rstrip('.')} in {scope}.")
        page = describe_scope_page(scope)
        can_operate = has_role(request.user, OPERATOR, scope)
        rollout = page["rollout"]
        context = {
            **self.admin_site.each_context(request),
            "title": f"{scope.application.name} in {scope.environment.name}",
            "opts": self.model._meta,
            "scope": scope,
            **page,
            "changes": [(change, CHANGE_COLOURS[change.state]) for change in page["changes"]],
            "agents": [
                (agent, agent.status.replace("_", " "), BADGE_COLOURS[agent.status])
                for agent in page["agents"]
            ],
            "agent_counts": [
                (status, status.replace("_", " "), page["agent_counts"][status])
                for status in STATUSES
            ],
            # Buttons lead only where the user may act.
            "can_publish": has_role(request.user, EDITOR, scope),
            "can_operate": can_operate,
        }
        if rollout is not None:
            context.update(
                progress_context(rollout, page["progress"], page["waves"]),
                rollout_colour=ROLLOUT_COLOURS[rollout.state],
                controls=controls_of(rollout) if can_operate else [],
            )
        return TemplateResponse(request, "admin/scopes/application/scope.html", context)

    def save_model(self, request, obj, form, change) -> None:
        if change:
            services.change_application(
                Application.objects.get(pk=obj.pk),
                description=obj.description,
                actor=request.user,
                source_ip=client_ip(request),
            )
        else:
            made = services.create_application(
                obj.name,
                description=obj.description,
                actor=request.user,
                source_ip=client_ip(request),
            )
            obj.pk = made.pk


class EnvironmentForm(forms.ModelForm):
    class Meta:
        model = Environment
        fields = ("name", "order", "approvals_required", "default_rollout")

    def clean_default_rollout(self):
        plan = self.cleaned_data.get("default_rollout")
        if plan is None:
            return None
        checked = RolloutPlanSerializer(data=plan)
        if not checked.is_valid():
            raise forms.ValidationError(
                "; ".join(
                    f"{field}: {' '.join(map(str, errors))}"
                    for field, errors in checked.errors.items()
                )
            )
        return dict(checked.validated_data)


@admin.register(Environment)
class EnvironmentAdmin(NoDeleteAdmin):
    form = EnvironmentForm
    list_display = ("name", "order", "approvals_required", "default_rollout", "created_at")
    fields = ("name", "order", "approvals_required", "default_rollout", "created_at")

    def save_model(self, request, obj, form, change) -> None:
        policy = {field: getattr(obj, field) for field in services.POLICY_FIELDS}
        if change:
            fresh = Environment.objects.get(pk=obj.pk)
            services.change_environment(
                fresh, actor=request.user, source_ip=client_ip(request), **policy
            )
        else:
            made = services.create_environment(
                obj.name, actor=request.user, source_ip=client_ip(request), **policy
            )
            obj.pk = made.pk
