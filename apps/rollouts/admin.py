"""The rollout page of the admin: the plan, the current wave, the agents per state, a chart of
agents applied since the start, and the operator's controls (each confirmed, then POSTed)."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from apps.accounts.roles import OPERATOR, has_role, has_role_somewhere, role_needed_message
from apps.audit.models import AuditEntry
from apps.configs import actions
from apps.rollouts import services, status
from apps.rollouts.health import health_of
from apps.rollouts.models import Rollout
from controller_site.admin_site import HistoryAdmin
from controller_site.errors import ServiceError
from controller_site.request_info import client_ip

CHART_WIDTH, CHART_HEIGHT, CHART_MARGIN = 640, 220, 36
# What each control does, as its confirmation page says it, and the states that allow it.
CONTROLS = {
    "promote": (
        services.promote_rollout,
        Rollout.ACTIVE_STATES,
        "Start the next wave now, without waiting for the current one to apply and bake. On "
        "the last wave this completes the rollout.",
    ),
    "pause": (
        services.pause_rollout,
        (Rollout.ROLLING,),
        "No new wave starts until you resume; agents of the started waves keep the new version.",
    ),
    "resume": (
        services.resume_rollout,
        (Rollout.PAUSED,),
        "Waves start again; the current wave's bake time counts from now.",
    ),
    "abort": (
        actions.abort_rollout,
        Rollout.SPLIT_STATES,
        "Every agent goes back to the previous version's content at once: a new version "
        "carrying that content is published, as a rollback does.",
    ),
}
STATE_COLOURS = {
    Rollout.ROLLING: "#1565c0",
    Rollout.PAUSED: "#ef6c00",
    Rollout.COMPLETED: "#2e7d32",
    Rollout.HALTED: "#b71c1c",
    Rollout.ABORTED: "#6d4c41",
}


def progress_chart(rollout: Rollout, total: int, waves: list[AuditEntry]) -> dict:
    """The chart's geometry: agents applied over the seconds since the start, as an SVG
    polyline, with a mark where each wave started."""
    points = [tuple(point) for point in rollout.progress or [[0, 0]]]
    span = max([points[-1][0], 1.0] + [_seconds(rollout, e) for e in waves])
    top = max(total, max(applied for _, applied in points), 1)
    inner_w = CHART_WIDTH - 2 * CHART_MARGIN
    inner_h = CHART_HEIGHT - 2 * CHART_MARGIN

    def x(seconds: float) -> float:
        return round(CHART_MARGIN + inner_w * seconds / span, 1)

    def y(applied: float) -> float:
        return round(CHART_MARGIN + inner_h * (1 - applied / top), 1)

    # A step line: the count holds until it moves.
    steps = []
    for index, (seconds, applied) in enumerate(points):
        if index:
            steps.append(f"{x(seconds)},{y(points[index - 1][1])}")
        steps.append(f"{x(seconds)},{y(applied)}")
    if rollout.state in Rollout.SPLIT_STATES:
        steps.append(f"{x(span)},{y(points[-1][1])}")
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "left": CHART_MARGIN,
        "right": CHART_WIDTH - CHART_MARGIN,
        "top": CHART_MARGIN,
        "bottom": CHART_HEIGHT - CHART_MARGIN,
        "label_y": CHART_HEIGHT - CHART_MARGIN + 16,
        "points": " ".join(steps),
        "total": top,
        "span": round(span),
        "waves": [
            {"x": x(_seconds(rollout, entry)), "label": f"wave {entry.detail.get('wave')}"}
            for entry in waves
        ],
    }


def _seconds(rollout: Rollout, entry: AuditEntry) -> float:
    return max(0.0, (entry.at - rollout.started_at).total_seconds())


def progress_context(rollout: Rollout, progress: status.Progress, waves: list[AuditEntry]) -> dict:
    """The agents per state as bars and the chart of agents applied since the start, as the
    rollout's page and its scope's page draw them (admin/rollouts/rollout/progress.html)."""
    stale = sum(1 for agent in progress.agents if agent["stale"] and not agent["applied"])
    bars = [
        ("applied", progress.applied, "#2e7d32"),
        ("applying", len(progress.waiting), "#1565c0"),
        ("stale", stale, "#6d4c41"),
        ("not yet targeted", progress.total - progress.targeted, "#9e9e9e"),
    ]
    return {
        "progress": progress,
        "bars": [
            (label, count, colour, round(100 * count / max(progress.total, 1)))
            for label, count, colour in bars
        ],
        "chart": progress_chart(rollout, progress.total, waves),
    }


def controls_of(rollout: Rollout) -> list[str]:
    """The controls the rollout's state allows (whoever may use them)."""
    return [name for name, (_, states, _) in CONTROLS.items() if rollout.state in states]


@admin.register(Rollout)
class RolloutAdmin(HistoryAdmin):
    """Rollouts are made by publishing with a plan; here they are watched and steered."""

    list_display = [
        "version",
        "scope",
        "previous_version",
        "state_badge",
        "wave_of",
        "started_at",
        "updated_at",
        "created_by",
    ]
    list_display_links = ["version"]
    list_filter = ["state", "scope"]

    @admin.display(description="state")
    def state_badge(self, obj: Rollout) -> str:
        return format_html(
            '<span class="rollout-state" style="background:{};color:#fff;padding:2px 8px;'
            'border-radius:10px">{}</span>',
            STATE_COLOURS[obj.state],
            obj.state,
        )

    @admin.display(description="wave")
    def wave_of(self, obj: Rollout) -> str:
        return f"{obj.wave} of {obj.last_wave}"

    def has_control_permission(self, request, rollout: Rollout | None = None) -> bool:
        # Steering a rollout is the operator's, like a rollback: in the rollout's scope.
        if rollout is None:
            return has_role_somewhere(request.user, OPERATOR)
        return has_role(request.user, OPERATOR, rollout.scope)

    def get_urls(self):
        return [
            path(
                "<int:pk>/control/<str:action>/",
                self.admin_site.admin_view(self.control_view),
                name="rollouts_rollout_control",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        rollout = get_object_or_404(Rollout, pk=object_id)
        progress = status.measure(rollout)
        waves = status.wave_starts(rollout)
        latest = status.get_latest_rollout(rollout.scope_id)
        controls = []
        allowed = self.has_control_permission(request, rollout)
        if latest is not None and latest.pk == rollout.pk and allowed:
            controls = controls_of(rollout)
        new_hits, previous_hits = health_of(rollout)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Rollout of version {rollout.version}",
            "opts": self.model._meta,
            "rollout": rollout,
            "state_colour": STATE_COLOURS[rollout.state],
            **progress_context(rollout, progress, waves),
            "wave_plan": [
                ("0", "canaries", ", ".join(f"{k}={v}" for k, v in rollout.canary_labels.items()))
            ]
            * bool(rollout.canary_labels)
            + [(str(k), f"{p}%", "of the others") for k, p in enumerate(rollout.waves, 1)],
            "wave_entries": waves,
            "controls": controls,
            "health": [
                (rollout.version, "new", new_hits),
                (rollout.previous_version, "previous", previous_hits),
            ],
            "stragglers": [a for a in progress.agents if a["targeted"] and not a["applied"]][:50],
        }
        return TemplateResponse(request, "admin/rollouts/rollout/detail.html", context)

    def control_view(self, request, pk: int, action: str):
        if action not in CONTROLS:
            raise Http404
        if not self.has_control_permission(request):
            raise PermissionDenied(role_needed_message(OPERATOR))
        rollout = get_object_or_404(Rollout, pk=pk)
        if not self.has_control_permission(request, rollout):
            raise PermissionDenied(role_needed_message(OPERATOR))
        detail = reverse("admin:rollouts_rollout_change", args=[rollout.pk])
        control, _, explanation = CONTROLS[action]
        if request.method == "POST" and request.POST.get("confirmed") == "yes":
            try:
                control(
                    scope_id=rollout.scope_id,
                    actor=request.user,
                    source_ip=client_ip(request),
                    reason=request.POST.get("reason", "")[:1000],
                    version=rollout.version,
                )
            except ServiceError as exc:
                self.message_user(request, exc.detail, messages.ERROR)
            else:
                rollout.refresh_from_db()
                self.message_user(
                    request,
                    f"Rollout of version {rollout.version}: {action} done, now {rollout.state}.",
                )
            return HttpResponseRedirect(detail)
        context = {
            **self.admin_site.each_context(request),
            "title": f"{action.capitalize()} the rollout of version {rollout.version}?",
            "opts": self.model._meta,
            "rollout": rollout,
            "action": action,
            "explanation": explanation,
            "back": detail,
        }
        return TemplateResponse(request, "admin/rollouts/rollout/confirm.html", context)
