"""Applications and environments in the admin: made and changed through the same service
functions as the API (so that each is present in every scope at once, and audited)."""

from django import forms
from django.contrib import admin
from django.utils.html import format_html, format_html_join

from apps.agents.services import STATUSES
from apps.rollouts.serializers import RolloutPlanSerializer
from apps.scopes import services
from apps.scopes.models import Application, Environment
from apps.scopes.status import describe_application
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
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} in sync, {} behind, {} stale, "
            "{} revoked</td></tr>",
            (
                (
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
