from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from apps.accounts.roles import (
    EDITOR,
    OPERATOR,
    SUPERUSER,
    has_role,
    has_role_somewhere,
    role_needed_message,
)
from apps.changes import services as changes
from apps.configs import actions, preflight, services
from apps.configs.errors import NoLiveAgent, PreflightFailed
from apps.configs.models import ConfigVersion
from apps.rollouts.errors import RolloutPlanNeedsDirectPublish
from apps.rollouts.serializers import RolloutPlanSerializer
from apps.scopes.models import Scope
from apps.scopes.services import default_scope
from controller_site.admin_site import HistoryAdmin
from controller_site.errors import ServiceError
from controller_site.request_info import client_ip
from protocol.labels import InvalidLabels, parse_label_pairs
from protocol.rules import (
    MAX_POOLING_INTERVAL,
    MAX_URL_LENGTH,
    MIN_POOLING_INTERVAL,
    InvalidConfig,
    check_config_url,
)


class ConfigChangeForm(forms.Form):
    """Only turns the posted text into values; the service applies the shared rules."""

    config_url = forms.CharField(
        max_length=MAX_URL_LENGTH,
        widget=forms.URLInput(attrs={"size": 80}),
        help_text="Absolute http or https URL.",
    )
    pooling_interval = forms.IntegerField(
        help_text=f"Seconds, {MIN_POOLING_INTERVAL} to {MAX_POOLING_INTERVAL}; agents follow "
        "a change at once.",
    )
    staged = forms.BooleanField(
        required=False,
        label="Roll out in stages",
        help_text="Canaries first, then waves of the other agents, instead of everyone at once.",
    )
    canary_labels = forms.CharField(
        required=False,
        help_text="Agents carrying all these labels go first, e.g. ring=canary (comma list). "
        "Empty: no canaries.",
    )
    waves = forms.CharField(
        required=False,
        initial="100",
        help_text="Cumulative percentages of the other agents, rising, ending at 100; e.g. 25,100.",
    )
    bake_seconds = forms.IntegerField(
        required=False,
        initial=0,
        help_text="Seconds each wave runs, once applied by its live agents, before the next.",
    )
    auto_rollback = forms.BooleanField(
        required=False,
        initial=True,
        label="Roll back when failing",
        help_text="When the new version's hits fail too often: halt and put every agent back on "
        "the previous content. Unticked: only pause for an operator.",
    )
    max_failure_rate = forms.FloatField(
        required=False,
        initial=0.2,
        help_text="Failed / all hits of the new version above which the rollout stops, 0 to 1 "
        "(unless the previous version failed as often).",
    )
    min_hits = forms.IntegerField(
        required=False,
        initial=20,
        help_text="Hits of the new version an agent needs before its failure rate is judged.",
    )
    preflight = forms.BooleanField(
        required=False,
        label="Pre-flight first",
        help_text="Have a few agents' workers fetch the URL first; publish nothing when none "
        "succeeds.",
    )
    # Superusers only (the form drops it for everyone else): the emergency publish's reason,
    # kept in its audit entry as the API's `reason` is.
    reason = forms.CharField(
        required=False,
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
        label="Reason for the emergency",
        help_text="Required for an emergency publish: why it cannot wait for approval. "
        "Kept in the audit log.",
    )

    def __init__(self, *args, offer_emergency: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if not offer_emergency:
            del self.fields["reason"]

    def emergency_reason(self) -> str | None:
        """The reason, checked as the API checks it; None (with the field's error) when the
        form cannot make an emergency publish."""
        reason = self.cleaned_data.get("reason", "")
        if not reason:
            self.add_error("reason", "An emergency publish needs a reason.")
            return None
        if self.cleaned_data.get("staged"):
            self.add_error("staged", RolloutPlanNeedsDirectPublish().detail)
            return None
        return reason

    def rollout_plan(self) -> dict | None:
        """The plan, checked by the API's own rules; None when not staged. Problems become
        errors of the form's fields."""
        values = self.cleaned_data
        if not values.get("staged"):
            return None
        plan = {
            "bake_seconds": values.get("bake_seconds") or 0,
            "auto_rollback": bool(values.get("auto_rollback")),
            "preflight": bool(values.get("preflight")),
        }
        for name, default in (("max_failure_rate", 0.2), ("min_hits", 20)):
            plan[name] = default if values.get(name) is None else values[name]
        try:
            pairs = [p for p in (values.get("canary_labels") or "").split(",") if p.strip()]
            plan["canary_labels"] = parse_label_pairs(pairs)
        except InvalidLabels as exc:
            self.add_error("canary_labels", str(exc))
            return None
        try:
            plan["waves"] = [int(w) for w in (values.get("waves") or "100").split(",") if w.strip()]
        except ValueError:
            self.add_error("waves", "Whole numbers separated by commas, e.g. 25,100.")
            return None
        checked = RolloutPlanSerializer(data=plan)
        if not checked.is_valid():
            for name, problems in checked.errors.items():
                self.add_error(name if name in self.fields else None, " ".join(map(str, problems)))
            return None
        return checked.validated_data


@admin.register(ConfigVersion)
class ConfigVersionAdmin(HistoryAdmin):
    """Versions are history: nobody edits or deletes one; changes and rollbacks make a new
    version through the same service functions as the API."""

    list_display = [
        "version",
        "scope",
        "config_url",
        "pooling_interval",
        "changed",
        "rolled_back_from",
        "created_by",
        "created_at",
    ]
    list_display_links = ["version"]
    list_filter = ["scope"]
    search_fields = ["config_url"]
    readonly_fields = [f.name for f in ConfigVersion._meta.fields]
    actions = ["rollback_to_version"]
    change_list_template = "admin/configs/configversion/change_list.html"

    def get_queryset(self, request):
        # The previous version's fields ride along, so the changed column costs no query per row.
        return services.with_previous(super().get_queryset(request).select_related("created_by"))

    @admin.display(description="changed")
    def changed(self, obj: ConfigVersion) -> str:
        return ", ".join(services.changed_fields(obj, services.previous_of(obj))) or "nothing"

    def has_publish_permission(self, request) -> bool:
        """Making a new version with the form, in some scope (the form's scope decides)."""
        return has_role_somewhere(request.user, EDITOR)

    def has_rollback_permission(self, request) -> bool:
        """Offered to an operator of some scope; the version's scope decides."""
        return has_role_somewhere(request.user, OPERATOR)

    def acting_scope(self, request) -> Scope:
        """The scope the change form acts on: `?scope=<id>`, or the default scope."""
        wanted = request.GET.get("scope")
        if wanted is None:
            return default_scope()
        scope = (
            Scope.objects.select_related("application", "environment")
            .filter(pk=int(wanted) if wanted.isdigit() else 0)
            .first()
        )
        if scope is None:
            raise Http404("No such scope.")
        return scope

    # The change form ----------------------------------------------------------------------

    def get_urls(self):
        return [
            path(
                "change-config/",
                self.admin_site.admin_view(self.change_config_view),
                name="configs_configversion_change_config",
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra = {"can_publish": self.has_publish_permission(request), **(extra_context or {})}
        return super().changelist_view(request, extra)

    def change_config_view(self, request):
        if not self.has_publish_permission(request):
            raise PermissionDenied(role_needed_message(EDITOR))
        scope = self.acting_scope(request)
        if not has_role(request.user, EDITOR, scope):
            raise PermissionDenied(role_needed_message(EDITOR))
        current = services.get_current_config(scope.pk)
        trial = None
        if request.method == "POST" and "_preflight" in request.POST:
            # Try the URL on a few agents' workers; nothing is saved.
            form = ConfigChangeForm(request.POST, offer_emergency=request.user.is_superuser)
            trial = self._preflight(form, request.POST.get("config_url", ""), scope)
        elif request.method == "POST":
            emergency = "_emergency" in request.POST
            if emergency and not request.user.is_superuser:
                # Refused before the form is read: nothing of a forged emergency is kept.
                raise PermissionDenied(
                    role_needed_message(SUPERUSER) + " An emergency publish skips approval."
                )
            form = ConfigChangeForm(request.POST, offer_emergency=request.user.is_superuser)
            reason = form.emergency_reason() if emergency and form.is_valid() else None
            plan = form.rollout_plan() if form.is_valid() else None
            if form.is_valid():
                values = {
                    "config_url": form.cleaned_data["config_url"],
                    "pooling_interval": form.cleaned_data["pooling_interval"],
                }
                try:
                    outcome = changes.request_config_change(
                        request.user,
                        values,
                        scope_id=scope.pk,
                        partial=current is not None,
                        plan=plan,
                        emergency=emergency,
                        reason=reason or "",
                        source_ip=client_ip(request),
                    )
                except InvalidConfig as exc:
                    form.add_error(exc.field, exc.message)
                except PreflightFailed as exc:
                    # The results are shown as the pre-flight button shows them.
                    trial = exc.answer
                    form.add_error(None, exc.detail)
                except ServiceError as exc:
                    # A rollout in progress (409), or one with nothing to roll out from.
                    form.add_error(None, exc.detail)
                else:
                    return self._done(request, outcome, emergency, scope)
        else:
            initial = (
                {"config_url": current.config_url, "pooling_interval": current.pooling_interval}
                if current
                else {}
            )
            form = ConfigChangeForm(initial=initial, offer_emergency=request.user.is_superuser)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Change the configuration of {scope}",
            "opts": self.model._meta,
            "form": form,
            "current": current,
            "preflight": trial,
            "approvals_required": changes.approvals_required(scope.pk),
            # The way past review is offered only where there is review to bypass (and kept in
            # view when an emergency publish was tried, to show its errors).
            "offer_emergency": request.user.is_superuser
            and (changes.approvals_required(scope.pk) or "_emergency" in request.POST),
        }
        return TemplateResponse(request, "admin/configs/configversion/change_config.html", context)

    def _preflight(self, form: ConfigChangeForm, config_url: str, scope: Scope) -> dict | None:
        try:
            check_config_url(config_url)
            return preflight.run_preflight(config_url=config_url, scope_id=scope.pk)
        except InvalidConfig as exc:
            form.add_error(exc.field, exc.message)
        except NoLiveAgent as exc:
            form.add_error(None, exc.detail)
        return None

    def _done(self, request, outcome: changes.ConfigChange, emergency: bool, scope: Scope):
        """Say what the change did, and go where it can be followed."""
        if outcome.change_request is not None:
            self.message_user(
                request,
                f"Change request #{outcome.change_request.pk} awaits approval; nothing is "
                f"published until {changes.approvals_required(scope.pk)} approver(s) other than "
                "you approve it.",
            )
            return HttpResponseRedirect(
                reverse("admin:changes_changerequest_change", args=[outcome.change_request.pk])
            )
        version = outcome.config.version
        if not outcome.created:
            self.message_user(
                request,
                f"Nothing changed: version {version} already has this content.",
                messages.WARNING,
            )
        elif emergency:
            self.message_user(
                request,
                f"Emergency publish: version {version} is now current, without approval.",
                messages.WARNING,
            )
        else:
            self.message_user(request, f"Version {version} of {scope} is now current.")
        versions = reverse("admin:configs_configversion_changelist")
        return HttpResponseRedirect(f"{versions}?scope__id__exact={scope.pk}")

    # Rollback -------------------------------------------------------------------------------

    @admin.action(description="Roll back to this version", permissions=["rollback"])
    def rollback_to_version(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(
                request, "Select exactly one version to roll back to.", messages.WARNING
            )
            return None
        target = queryset.select_related("scope__application", "scope__environment").get()
        if not has_role(request.user, OPERATOR, target.scope):
            self.message_user(
                request,
                f"{role_needed_message(OPERATOR)} in {target.scope}: nothing was rolled back.",
                messages.ERROR,
            )
            return None
        if request.POST.get("confirmed") != "yes":
            current = services.get_current_config(target.scope_id)
            return TemplateResponse(
                request,
                "admin/confirm_action.html",
                {
                    **self.admin_site.each_context(request),
                    "title": f"Roll back to version {target.version}?",
                    "opts": self.model._meta,
                    "action": "rollback_to_version",
                    "objects": [target],
                    "question": (
                        f"The configuration will become version {target.version}'s content: "
                        f"{target.config_url} every {target.pooling_interval} s. A new version is "
                        "made and every agent is told at once."
                    ),
                    "columns": (
                        f"now (version {current.version})" if current else "now",
                        f"after the rollback (version {target.version}'s)",
                    ),
                    "rows": [
                        (
                            "config_url",
                            current.config_url if current else "—",
                            target.config_url,
                        ),
                        (
                            "pooling_interval",
                            current.pooling_interval if current else "—",
                            target.pooling_interval,
                        ),
                    ],
                    "confirm_label": "Yes, roll back",
                },
            )
        config, created = actions.rollback_config(
            version=target.version,
            scope_id=target.scope_id,
            actor=request.user,
            source_ip=client_ip(request),
        )
        if created:
            self.message_user(
                request,
                f"Rolled back: version {config.version} has version {target.version}'s content.",
            )
        else:
            self.message_user(
                request,
                f"Nothing changed: version {target.version}'s content is already current.",
                messages.WARNING,
            )
        return None
