import json

from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import generics, status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.roles import ANY_ROLE, EDITOR, OPERATOR
from apps.agents.auth import AgentEndpoint
from apps.changes import scheduling
from apps.changes import services as changes
from apps.changes.serializers import (
    ChangeRequestSerializer,
    ScheduledChangeSerializer,
    scheduled_url,
)
from apps.configs import actions, preflight, promotion, services, watch
from apps.configs.errors import NoConfigYet
from apps.configs.models import ConfigVersion
from apps.configs.serializers import (
    AdminConfigSerializer,
    AgentPreflightResultSerializer,
    ConfigSerializer,
    ConfigWriteSerializer,
    HistoryEntrySerializer,
    PreflightAnswerSerializer,
    PreflightFailedSerializer,
    PreflightSerializer,
    PromoteSerializer,
    RollbackSerializer,
    StaleVersionSerializer,
    VersionQuerySerializer,
    VersionStateSerializer,
)
from apps.rollouts.targets import target_of
from apps.scopes.services import get_scope
from apps.scopes.views import ActsOnScope
from controller_site.request_info import client_ip

ERRORS = {
    400: OpenApiResponse(description="Invalid input; nothing was stored."),
}

CHANGE_PROPOSED = OpenApiResponse(
    PolymorphicProxySerializer(
        component_name="Accepted",
        serializers=[ChangeRequestSerializer, ScheduledChangeSerializer],
        resource_type_field_name=None,
    ),
    description="Nothing is published yet. Approvals are required: a pending change request. "
    "With `publish_at`: the scheduled change (in a scope needing approvals, its "
    "`change_request` is to be approved before its time); `Location` names it.",
)


IF_MATCH = OpenApiParameter(
    "If-Match",
    location=OpenApiParameter.HEADER,
    required=False,
    description='The ETag of the version the change is based on, for example "7". When a newer '
    "version exists the answer is 412 and nothing is stored.",
)
STALE = OpenApiResponse(
    response=StaleVersionSerializer,
    description="If-Match names a version that is no longer the newest; nothing was stored.",
)
ROLLOUT_ACTIVE = OpenApiResponse(
    description="A rollout is rolling or paused; promote it to the end or abort it first. "
    'With `"rollout": {"preflight": true}`, also when no agent is live to run the pre-flight.'
)
PREFLIGHT_FAILED = OpenApiResponse(
    response=PreflightFailedSerializer,
    description='The plan asked for a pre-flight (`"preflight": true`) and no agent\'s fetch '
    "of the URL got a status below 500 without an error: nothing was stored or published; "
    "`preflight` carries the results.",
)


def _written(config: ConfigVersion, created: bool) -> Response:
    return Response(
        AdminConfigSerializer(config).data,
        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        headers={"ETag": f'"{config.version}"'},
    )


def _scheduled(request, scope_id: int, values: dict, *, partial: bool, plan, when) -> Response:
    """A change with `publish_at`: 202 with the scheduled change; the current config (200) when
    it equals the current one."""
    scheduled = scheduling.schedule_config_change(
        request.user,
        values,
        publish_at=when,
        scope_id=scope_id,
        partial=partial,
        plan=plan,
        if_match=request.headers.get("If-Match"),
        source_ip=client_ip(request),
    )
    if scheduled is None:
        config = services.get_current_config(scope_id)
        return Response(AdminConfigSerializer(config).data, headers={"ETag": f'"{config.version}"'})
    return Response(
        ScheduledChangeSerializer(scheduled).data,
        status=status.HTTP_202_ACCEPTED,
        headers={"Location": scheduled_url(scheduled)},
    )


def _write(request, scope_id: int, values: dict, *, partial: bool) -> Response:
    """POST (`partial` False) and PUT: a superuser's emergency publishes at once; with approvals
    required, a change request (202) that publishes nothing yet; otherwise a publish."""
    plan, emergency = values.pop("rollout", None), values.pop("emergency", False)
    reason, publish_at = values.pop("reason", ""), values.pop("publish_at", None)
    if publish_at is not None:
        return _scheduled(request, scope_id, values, partial=partial, plan=plan, when=publish_at)
    outcome = changes.request_config_change(
        request.user,
        values,
        scope_id=scope_id,
        partial=partial,
        plan=plan,
        emergency=emergency,
        reason=reason,
        if_match=request.headers.get("If-Match"),
        source_ip=client_ip(request),
    )
    if outcome.change_request is not None:
        return Response(
            ChangeRequestSerializer(outcome.change_request).data, status=status.HTTP_202_ACCEPTED
        )
    config = outcome.config
    if partial:
        return Response(AdminConfigSerializer(config).data, headers={"ETag": f'"{config.version}"'})
    return _written(config, outcome.created)


class ConfigAdminView(ActsOnScope, APIView):
    """The current configuration, for admins."""

    role_rules = {"GET": ANY_ROLE, "POST": EDITOR, "PUT": EDITOR}

    @extend_schema(
        tags=["config"],
        summary="Current configuration",
        description='Sends `ETag: "<version>"`; give it back as `If-Match` on a change to refuse '
        "the change (412) if someone else changed the configuration meanwhile.",
        responses={
            200: AdminConfigSerializer,
            404: OpenApiResponse(),
        },
    )
    def get(self, request):
        config = services.get_current_config(self.scope_id)
        if config is None:
            raise NoConfigYet()
        return Response(AdminConfigSerializer(config).data, headers={"ETag": f'"{config.version}"'})

    @extend_schema(
        tags=["config"],
        summary="Create a configuration version",
        description="Both fields required. 201 with a new version; 200 with the current config "
        "when the content equals it. While CONFIG_APPROVALS_REQUIRED is 1 or more: 202 with a "
        "change request, and nothing is published until approvers approve it; a superuser's "
        '`"emergency": true` with a `reason` publishes at once all the same. With `rollout` '
        "(a direct publish only), the version reaches the agents in stages (see GET "
        "/config/admin/rollout). 409 while a rollout is rolling or paused. With `publish_at`: "
        "202 with a scheduled change, published at that time by the controller (see GET "
        "/config/admin/scheduled); in a scope needing approvals its change request must be "
        "approved before then, or it expires.",
        request=ConfigWriteSerializer,
        parameters=[IF_MATCH],
        responses={
            201: AdminConfigSerializer,
            200: AdminConfigSerializer,
            202: CHANGE_PROPOSED,
            409: ROLLOUT_ACTIVE,
            412: STALE,
            422: PREFLIGHT_FAILED,
            **ERRORS,
        },
    )
    def post(self, request):
        serializer = ConfigWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return _write(request, self.scope_id, serializer.validated_data, partial=False)

    @extend_schema(
        tags=["config"],
        summary="Change the configuration",
        description="Any subset of the fields. A new version only when something changed. "
        "With approvals required, 202 with a change request, as for POST. `rollout`, If-Match, "
        "409 and `publish_at` as for POST.",
        request=ConfigWriteSerializer(partial=True),
        parameters=[IF_MATCH],
        responses={
            200: AdminConfigSerializer,
            202: CHANGE_PROPOSED,
            409: ROLLOUT_ACTIVE,
            412: STALE,
            422: PREFLIGHT_FAILED,
            404: OpenApiResponse(),
            **ERRORS,
        },
    )
    def put(self, request):
        serializer = ConfigWriteSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        return _write(request, self.scope_id, serializer.validated_data, partial=True)


@extend_schema_view(
    get=extend_schema(
        tags=["config"],
        summary="Version history",
        responses={200: HistoryEntrySerializer(many=True)},
    )
)
class ConfigHistoryView(ActsOnScope, generics.ListAPIView):
    """Every version, newest first, with the fields each one changed."""

    serializer_class = HistoryEntrySerializer
    role_rules = {"GET": ANY_ROLE}

    def get_queryset(self):
        versions = ConfigVersion.objects.filter(scope_id=self.scope_id)
        return versions.select_related("created_by").order_by("-version")

    def paginate_queryset(self, queryset):
        page = super().paginate_queryset(queryset)
        if page:
            wanted = {entry.version - 1 for entry in page}
            previous = {
                c.version: c
                for c in ConfigVersion.objects.filter(
                    scope_id=self.scope_id, version__in=wanted
                ).only("version", "config_url", "pooling_interval")
            }
            for entry in page:
                entry.changed = services.changed_fields(entry, previous.get(entry.version - 1))
        return page


class ConfigRollbackView(ActsOnScope, APIView):
    role_rules = {"POST": OPERATOR}

    @extend_schema(
        tags=["config"],
        summary="Roll back to a version",
        description="Makes a new version whose content is version N's (201), or answers 200 "
        "when N's content is already current. While CONFIG_APPROVALS_REQUIRED is 1 or more a "
        "rollback still publishes at once: it restores content that was published before, and "
        "an incident must not wait for approvers. Its audit entry says it bypassed approval "
        "(`approval_bypassed`, with the rule), and the admin's change requests list shows it.",
        request=RollbackSerializer,
        responses={
            201: AdminConfigSerializer,
            200: AdminConfigSerializer,
            404: OpenApiResponse(description="Unknown version."),
            **ERRORS,
        },
    )
    def post(self, request):
        serializer = RollbackSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return _written(
            *actions.rollback_config(
                version=serializer.validated_data["version"],
                scope_id=self.scope_id,
                actor=request.user,
                source_ip=client_ip(request),
            )
        )


class PreflightView(ActsOnScope, APIView):
    role_rules = {"POST": EDITOR}

    @extend_schema(
        tags=["config"],
        summary="Try a URL on a few agents' workers before it ships",
        description="Up to `agents` live agents each have one of their workers fetch the URL "
        "(without applying it); the answer waits up to `timeout_seconds` for them and lists "
        "every agent asked, those that did not answer too. It passes (`ok`) only when a "
        "majority of the agents asked answered OK and none failed. The request "
        "reaches the agents on the watch they hold, so it needs run_controller. Nothing is "
        "stored.",
        request=PreflightSerializer,
        responses={
            200: PreflightAnswerSerializer,
            **ERRORS,
            409: OpenApiResponse(description="No agent is live."),
            429: OpenApiResponse(
                description="More than PREFLIGHT_RATE_PER_MINUTE pre-flights this minute by "
                "this user; Retry-After says when the next one is taken."
            ),
        },
    )
    def post(self, request):
        serializer = PreflightSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        preflight.reserve_preflight(request.user)
        return Response(
            preflight.run_preflight(scope_id=self.scope_id, **serializer.validated_data)
        )


class AgentPreflightResultView(AgentEndpoint):
    @extend_schema(
        tags=["agent"],
        summary="Answer a pre-flight",
        description="The agent's worker's answer to a pre-flight its watch handed it.",
        request=AgentPreflightResultSerializer,
        responses={
            204: None,
            400: OpenApiResponse(),
            404: OpenApiResponse(description="No such pre-flight is waiting for this agent."),
        },
    )
    def post(self, request):
        serializer = AgentPreflightResultSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = dict(serializer.validated_data)
        preflight.record_preflight_result(
            request.user, preflight_id=result.pop("id"), result=result
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class ConfigVersionView(AgentEndpoint):
    @extend_schema(
        tags=["agent"],
        summary="Current version and its content (a long poll with version and wait)",
        description="During a rollout, the agent's own target: the new version once its wave "
        "started, the previous one before. Answers the current version with its content "
        "(`config_url`, `uuid`, `pooling_interval`), so an agent applies a change from this "
        "answer alone. With "
        "`version` and `wait`, the request is held until the version differs from `version` "
        "or `wait` seconds have passed (then the unchanged state is answered).",
        parameters=[VersionQuerySerializer],
        responses={
            200: VersionStateSerializer,
            400: OpenApiResponse(description="Bad version or wait."),
            503: OpenApiResponse(
                description="The database is unavailable, or the controller is stopping and "
                "hands back the watch; retry shortly (Retry-After)."
            ),
        },
    )
    def get(self, request):
        query = VersionQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        agent = request.user
        return Response(
            target_of(services.get_current_state(agent.scope_id), agent.pk, agent.labels)
        )


class EventStreamRenderer(BaseRenderer):
    """text/event-stream: the events as bytes; an error's detail as its JSON."""

    media_type = "text/event-stream"
    format = "sse"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data if isinstance(data, bytes) else json.dumps(data).encode()


class ConfigStreamView(AgentEndpoint):
    """Served here only when the controller runs without its ASGI front (the schema, a plain
    WSGI server): the events due now, then the end of the stream; the client reconnects with
    Last-Event-ID. The long-lived stream is apps/configs/watch.py's."""

    renderer_classes = [EventStreamRenderer, JSONRenderer]

    @extend_schema(
        tags=["agent"],
        summary="Every new target version as an event, on one connection (Server-Sent Events)",
        description="The watch of `GET /config/version` on one long-lived connection. Each event "
        "is `id: <version>`, `event: config` and `data:` the JSON that `GET /config/version` "
        "answers the agent (its own target during a rollout). On connect, the current target is "
        "sent at once unless `Last-Event-ID` already names it; then each new target as it comes "
        "(a change, the agent's rollout wave, a rollback or an abort). A comment line "
        "(`: keep-alive`) every 15 s keeps it open through proxies; `event: preflight` carries a "
        "pre-flight request for the agent; `event: revoked` ends the stream of a revoked agent; "
        "the stream also ends when the controller stops (the client reconnects after `retry`).",
        parameters=[
            OpenApiParameter(
                "Last-Event-ID",
                location=OpenApiParameter.HEADER,
                required=False,
                description="The last version the client received, for example 7.",
            ),
            # The renderer's format is an implementation detail, not a client's choice.
            OpenApiParameter("format", exclude=True),
        ],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                response=str, description="The event stream."
            ),
            400: OpenApiResponse(description="Last-Event-ID is not a version number."),
        },
    )
    def get(self, request):
        known, bad = watch.last_event_id(request.META.get("HTTP_LAST_EVENT_ID"))
        if bad:
            return Response(
                {"detail": "Last-Event-ID must be a version number."},
                status=status.HTTP_400_BAD_REQUEST,
            )
        agent = request.user
        answer = target_of(services.get_current_state(agent.scope_id), agent.pk, agent.labels)
        body = watch.STREAM_RETRY
        if answer["version"] != known:
            body += watch.stream_event(*(answer[field] for field in watch.STATE_FIELDS))
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return Response(body, content_type="text/event-stream", headers=headers)


class ConfigAgentView(AgentEndpoint):
    @extend_schema(
        tags=["agent"],
        summary="Current configuration, for agents",
        parameters=[
            OpenApiParameter(
                "If-None-Match",
                location=OpenApiParameter.HEADER,
                required=False,
                description='The ETag the agent holds, for example "7".',
            )
        ],
        responses={
            200: ConfigSerializer,
            304: OpenApiResponse(description="Unchanged since the given ETag."),
            404: OpenApiResponse(description="No configuration yet."),
        },
    )
    def get(self, request):
        version, etag, unchanged = services.read_for_agent(
            request.META.get("HTTP_IF_NONE_MATCH"), request.user
        )
        if unchanged:
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        config = ConfigVersion.objects.get(scope_id=request.user.scope_id, version=version)
        return Response(ConfigSerializer(config).data, headers={"ETag": etag})


class ConfigPromoteView(ActsOnScope, APIView):
    role_rules = {"POST": EDITOR}

    @extend_schema(
        tags=["config"],
        summary="Promote a version from another environment",
        description="Takes the content of a version of the same application in `from_environment` "
        "(its current one unless `version` says) and changes this scope to it, as POST "
        "/config/admin would: 201 with a new version, 200 when the content is already current, "
        "202 with a change request where this environment needs approvals; the environment's "
        "default rollout plan applies unless `rollout` names one. Reading the source needs a "
        "role there too.",
        request=PromoteSerializer,
        responses={
            201: AdminConfigSerializer,
            200: AdminConfigSerializer,
            202: CHANGE_PROPOSED,
            404: OpenApiResponse(description="Unknown environment or version, or none yet."),
            409: ROLLOUT_ACTIVE,
            **ERRORS,
        },
    )
    def post(self, request):
        serializer = PromoteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        target = self.acting_scope()
        source = get_scope(target.application.name, data["from_environment"])
        values = promotion.promotion_content(request.user, source, target, data.get("version"))
        if "rollout" in data:
            values["rollout"] = data["rollout"]
        return _write(request, target.pk, values, partial=False)
