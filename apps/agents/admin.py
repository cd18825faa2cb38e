from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Case, IntegerField, OuterRef, Q, Subquery, Value, When
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from apps.accounts.roles import OPERATOR, has_role, has_role_somewhere, role_needed_message
from apps.agents import services
from apps.agents.models import Agent, AgentHits, RegistrationToken
from apps.configs.services import get_current_state
from apps.rollouts.targets import target_version_expression
from apps.scopes.models import Scope
from apps.scopes.services import default_scope
from controller_site.request_info import client_ip
from protocol.labels import InvalidLabels, parse_label_pairs

BADGE_COLOURS = {
    "in_sync": "#2e7d32",
    "behind": "#ef6c00",
    "stale": "#6d4c41",
    "revoked": "#b71c1c",
}


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [(status, status.replace("_", " ")) for status in services.STATUSES]

    def queryset(self, request, queryset):
        if self.value() not in services.STATUSES:
            return queryset
        now = timezone.now()
        condition = Q(pk__in=[])
        for scope_id, state in scope_states(request).items():
            condition |= Q(scope_id=scope_id) & services.status_condition(self.value(), state, now)
        return queryset.filter(condition)


def scope_states(request) -> dict[int, dict]:
    """The served state of every scope with an agent: each agent is judged by its own. Read
    once per request: the status filter and the list's target column both need them, and the
    two must judge by the same states."""
    states = getattr(request, "_agent_scope_states", None)
    if states is None:
        scope_ids = Agent.objects.order_by().values_list("scope_id", flat=True).distinct()
        states = {scope_id: get_current_state(scope_id) for scope_id in scope_ids}
        request._agent_scope_states = states
    return states


class LabelFilter(admin.SimpleListFilter):
    """Filter by one label pair, among those the agents carry."""

    title = "label"
    parameter_name = "label"

    def lookups(self, request, model_admin):
        pairs = set()
        for labels in Agent.objects.exclude(labels={}).values_list("labels", flat=True)[:5000]:
            pairs.update(f"{key}={value}" for key, value in labels.items())
        return [(pair, pair) for pair in sorted(pairs)]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        try:
            labels = parse_label_pairs([self.value()])
        except InvalidLabels:
            return queryset.none()
        return services.filter_by_labels(queryset, labels)


def _pairs_text(labels: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))


class LabelPairsField(forms.CharField):
    """Labels typed as `ring=canary, zone=eu-1`, checked by the agents' label rules."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault(
            "help_text",
            "KEY=VALUE pairs separated by commas (ring=canary, zone=eu-1): 1 to 63 of "
            "A-Z a-z 0-9 _ . -, at most 16.",
        )
        super().__init__(**kwargs)

    def clean(self, value):
        text = super().clean(value)
        try:
            return parse_label_pairs([pair for pair in text.split(",") if pair.strip()])
        except InvalidLabels as exc:
            raise forms.ValidationError(str(exc)) from None


class AgentForm(forms.ModelForm):
    # Not the model field: labels change through set_agent_labels (audited, and every process
    # answers the agent by them at once), never by a plain save.
    label_pairs = LabelPairsField(label="Labels")

    class Meta:
        model = Agent
        fields = ["name", "hostname"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.initial["label_pairs"] = _pairs_text(self.instance.labels or {})
        self.fields[
            "label_pairs"
        ].help_text += (
            " Rollouts pick their canaries by them; the labels an agent reports change nothing."
        )


class AgentChangeList(ChangeList):
    """The agents' list, each row given its scope's served state as the filter read it: the
    status column then costs no read of its own per row."""

    def get_results(self, request):
        super().get_results(request)
        states = scope_states(request)
        for agent in self.result_list:
            agent.served_state = states.get(agent.scope_id)


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    form = AgentForm
    list_display = [
        "__str__",
        "scope",
        "hostname",
        "status_badge",
        "label_list",
        "last_seen",
        "applied_version",
        "worker_states",
        "target_hits",
        "created_at",
    ]
    list_filter = ["scope", StatusFilter, LabelFilter]
    search_fields = ["id", "name", "hostname"]
    readonly_fields = [
        "id",
        "status_badge",
        "label_list",
        "created_at",
        "last_seen",
        "applied_version",
        "worker_states",
        "target_hits",
        "revoked_at",
    ]
    fields = ["name", "hostname", "label_pairs", *readonly_fields]
    actions = ["revoke_agents"]

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if "label_pairs" in form.changed_data:
            services.set_agent_labels(
                obj,
                form.cleaned_data["label_pairs"],
                actor=request.user,
                source_ip=client_ip(request),
            )

    def get_changelist(self, request, **kwargs):
        return AgentChangeList

    @admin.display(description="status")
    def status_badge(self, obj: Agent) -> str:
        state = getattr(obj, "served_state", None) or get_current_state(obj.scope_id)
        status = services.agent_status(obj, state)
        return format_html(
            '<span class="agent-status status-{}" style="background:{};color:#fff;'
            'padding:2px 8px;border-radius:10px;white-space:nowrap">{}</span>',
            status,
            BADGE_COLOURS[status],
            status.replace("_", " "),
        )

    def get_queryset(self, request):
        # The hits of the version the agent should run (during a rollout, its own target), in
        # the same query as the agents.
        hits = AgentHits.objects.filter(agent=OuterRef("pk"), version=OuterRef("target"))
        return (
            super()
            .get_queryset(request)
            .annotate(
                target=Case(
                    *(
                        When(scope_id=scope_id, then=target_version_expression(state))
                        for scope_id, state in scope_states(request).items()
                    ),
                    default=Value(0),
                    output_field=IntegerField(),
                )
            )
            .annotate(
                target_ok=Subquery(hits.values("ok")[:1]),
                target_failed=Subquery(hits.values("failed")[:1]),
            )
        )

    @admin.display(description="hits (target version)")
    def target_hits(self, obj: Agent) -> str:
        ok, failed = getattr(obj, "target_ok", None), getattr(obj, "target_failed", None)
        if ok is None:
            return "—"
        rate = failed / (ok + failed) if ok + failed else 0.0
        return format_html(
            'v{}: {} ok, <span style="color:{}">{} failed</span> ({})',
            obj.target,
            ok,
            "#b71c1c" if failed else "inherit",
            failed,
            f"{rate:.0%}",
        )

    @admin.display(description="labels")
    def label_list(self, obj: Agent) -> str:
        if not obj.labels:
            return "—"
        return format_html_join(
            " ",
            '<code class="agent-label">{}={}</code>',
            sorted(obj.labels.items()),
        )

    @admin.display(description="workers")
    def worker_states(self, obj: Agent) -> str:
        if not obj.workers:
            return "—"
        return format_html_join(
            "",
            "<div>{} {} (v{})</div>",
            (
                (
                    "✔" if worker.get("ok") else "✘",
                    worker.get("url", "?"),
                    worker.get("version") if worker.get("version") is not None else "–",
                )
                for worker in obj.workers
            ),
        )

    def has_add_permission(self, request) -> bool:
        # Agents register themselves with a registration token.
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Revoke instead: a deleted agent would vanish from the fleet view and the audit trail
        # would name an agent nobody can look up.
        return False

    def has_revoke_permission(self, request) -> bool:
        """Offered to an operator of some scope; each agent's scope decides."""
        return has_role_somewhere(request.user, OPERATOR)

    @admin.action(description="Revoke selected agents", permissions=["revoke"])
    def revoke_agents(self, request, queryset):
        agents = list(queryset.select_related("scope__application", "scope__environment"))
        elsewhere = sorted(
            {str(a.scope) for a in agents if not has_role(request.user, OPERATOR, a.scope)}
        )
        if elsewhere:
            self.message_user(
                request,
                f"{role_needed_message(OPERATOR)} in {', '.join(elsewhere)}: nothing was revoked.",
                messages.ERROR,
            )
            return None
        if request.POST.get("confirmed") != "yes":
            return TemplateResponse(
                request,
                "admin/confirm_action.html",
                {
                    **self.admin_site.each_context(request),
                    "title": f"Revoke {len(agents)} agent{'s' if len(agents) != 1 else ''}?",
                    "opts": self.model._meta,
                    "action": "revoke_agents",
                    "objects": agents,
                    "question": "Their tokens are refused from now on, on every endpoint, "
                    "including watches they hold. This cannot be undone: a revoked agent "
                    "registers again with a new registration token.",
                    "confirm_label": "Yes, revoke",
                },
            )
        who = {"actor": request.user, "source_ip": client_ip(request)}
        revoked = sum(services.revoke_agent(agent, **who) for agent in agents)
        self.message_user(
            request,
            f"Revoked {revoked} agent{'s' if revoked != 1 else ''}"
            + (f"; {len(agents) - revoked} already were." if revoked != len(agents) else "."),
        )
        return None


class IssueTokenForm(forms.Form):
    scope = forms.ModelChoiceField(
        label="Application and environment",
        queryset=Scope.objects.select_related("application", "environment").order_by(
            "application__name", "environment__order", "environment__name"
        ),
        required=False,
        help_text="The agent that registers with the token serves this scope (the default "
        "scope when left empty).",
    )
    ttl = forms.IntegerField(
        label="Lifetime (seconds)",
        min_value=60,
        max_value=settings.REGISTRATION_TOKEN_MAX_TTL,
        initial=settings.REGISTRATION_TOKEN_TTL,
    )
    labels = LabelPairsField(
        label="Labels",
        help_text="Bound to the agent that registers with the token: KEY=VALUE pairs separated "
        "by commas (ring=canary).",
    )
    allow_agent_labels = forms.BooleanField(
        label="Also take the agent's own labels",
        required=False,
        help_text="Its --label values, except for names bound above. Off: they are left out.",
    )


@admin.register(RegistrationToken)
class RegistrationTokenAdmin(admin.ModelAdmin):
    list_display = [
        "short_hash",
        "scope",
        "created_at",
        "expires_at",
        "used_at",
        "used_by",
        "created_by",
    ]
    list_filter = ["scope"]
    readonly_fields = ["created_at", "expires_at", "used_at", "used_by", "created_by"]
    exclude = ["token_hash"]
    change_list_template = "admin/agents/registrationtoken/change_list.html"

    @admin.display(description="token hash")
    def short_hash(self, obj: RegistrationToken) -> str:
        return obj.token_hash[:12] + "…"

    def has_add_permission(self, request) -> bool:
        # Tokens are made by the service, which shows the token once; see issue_token_view.
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_issue_permission(self, request) -> bool:
        return has_role_somewhere(request.user, OPERATOR)

    def get_urls(self):
        return [
            path(
                "issue/",
                self.admin_site.admin_view(self.issue_token_view),
                name="agents_registrationtoken_issue",
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra = {"can_issue": self.has_issue_permission(request), **(extra_context or {})}
        return super().changelist_view(request, extra)

    def issue_token_view(self, request):
        if not self.has_issue_permission(request):
            raise PermissionDenied(role_needed_message(OPERATOR))
        token = record = None
        # `?scope=<id>` (a scope's page) chooses the scope; the POST is checked as any other.
        wanted = request.GET.get("scope", "")
        initial = {"scope": int(wanted) if wanted.isdigit() else default_scope()}
        form = IssueTokenForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            scope = form.cleaned_data["scope"] or default_scope()
            if not has_role(request.user, OPERATOR, scope):
                raise PermissionDenied(f"{role_needed_message(OPERATOR)} in {scope}.")
            token, record = services.issue_registration_token(
                scope_id=scope.pk,
                actor=request.user,
                ttl=form.cleaned_data["ttl"],
                labels=form.cleaned_data["labels"],
                allow_agent_labels=form.cleaned_data["allow_agent_labels"],
                source_ip=client_ip(request),
            )
            self.message_user(request, "Registration token issued. Copy it now.", messages.SUCCESS)
        context = {
            **self.admin_site.each_context(request),
            "title": "Issue a registration token",
            "opts": self.model._meta,
            "form": form,
            "token": token,
            "record": record,
        }
        # The admin view wrapper already marks the answer never-cache, so the token shown here
        # is not kept by the browser or a proxy.
        return TemplateResponse(request, "admin/agents/registrationtoken/issue.html", context)
