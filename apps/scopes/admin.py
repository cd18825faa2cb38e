"""Applications and environments in the admin: made and changed through the same service
functions as the API (so that each is present in every scope at once, and audited); and each
scope's page, where everything of one application in one environment meets."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from apps.accounts.roles import ANY_ROLE, EDITOR, OPERATOR, has_role, role_needed_message
from apps.agents.admin import BADGE_COLOURS
from apps.agents.services import STATUSES
from apps.changes.admin import STATE_COLOURS as CHANGE_COLOURS
from apps.changes.services import request_config_change
from apps.configs import promotion
from apps.rollouts.admin import STATE_COLOURS as ROLLOUT_COLOURS
from apps.rollouts.admin import controls_of, progress_context
from apps.rollouts.serializers import RolloutPlanSerializer
from apps.scopes import services
from apps.scopes.models import Application, Environment, Scope
from apps.scopes.status import describe_application, describe_scope_page
from controller_site.errors import NotFoundError, ServiceError
from controller_site.request_info import client_ip


def side_by_side(user, application: Application) -> list[dict]:
    """The application's environments in their order, each with its current content, which of
    its fields differ from the environment before it, and whether `user` may promote that one's
    content into it (an editor here who may read there, when they differ)."""
    rows = describe_application(application)
    scopes = {
        scope.environment.name: scope
        for scope in Scope.objects.filter(application=application).select_related("environment")
    }
    previous = None
    for row in rows:
        row["scope_url"] = reverse(
            "admin:scopes_scope", args=[application.name, row["environment"]]
        )
        row["agent_counts"] = [row["agents"][status] for status in STATUSES]
        row["differs"] = []
        row["promote_from"] = None
        if previous is not None:
            row["differs"] = [field for field in promotion.FIELDS if row[field] != previous[field]]
            here, there = scopes.get(row["environment"]), scopes.get(previous["environment"])
            if (
                row["differs"]
                and previous["current_version"]
                and here is not None
                and there is not None
                and has_role(user, EDITOR, here)
                and has_role(user, ANY_ROLE, there)
            ):
                row["promote_from"] = previous["environment"]
        previous = row
    return rows


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

    change_form_template = "admin/scopes/application/change_form.html"

    @admin.display(description="In each environment")
    def environments(self, obj) -> str:
        if obj is None or obj.pk is None:
            return "Present in every environment once made."
        return "Side by side below."

    def change_view(self, request, object_id, form_url="", extra_context=None):
        application = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if application is not None:
            extra["environments"] = side_by_side(request.user, application)
        return super().change_view(request, object_id, form_url, extra)

    def promote_view(self, request, application: str, environment: str):
        """The "promote" button: the environment before this one's current content, through
        the same change as the API's promote (the target's approvals and default rollout)."""
        try:
            target = services.get_scope(application, environment)
        except NotFoundError as exc:
            raise Http404(exc.detail) from None
        if not has_role(request.user, EDITOR, target):
            raise PermissionDenied(f"{role_needed_message(EDITOR).rstrip('.')} in {target}.")
        back = redirect(reverse("admin:scopes_application_change", args=[target.application_id]))
        if request.method != "POST":
            return back  # the button posts; a link followed here changes nothing
        try:
            source = services.get_scope(application, request.POST.get("from", ""))
            values = promotion.promotion_content(request.user, source, target, None)
            outcome = request_config_change(
                request.user, values, scope_id=target.pk, source_ip=client_ip(request)
            )
        except ServiceError as exc:
            self.message_user(request, f"Not promoted: {exc.detail}", messages.ERROR)
        else:
            if outcome.change_request is not None:
                said = f"change request #{outcome.change_request.pk} opened: it needs approval"
            elif outcome.created:
                said = f"version {outcome.config.version} published"
            else:
                said = "already current: nothing changed"
            self.message_user(request, f"Promoted {source} to {target}: {said}.", messages.SUCCESS)
        return back

    def get_urls(self):
        return [
            path(
                "<str:application>/envs/<str:environment>/",
                self.admin_site.admin_view(self.scope_view),
                name="scopes_scope",
            ),
            path(
                "<str:application>/envs/<str:environment>/promote/",
                self.admin_site.admin_view(self.promote_view),
                name="scopes_promote",
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
