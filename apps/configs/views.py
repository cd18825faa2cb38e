from django.db.models import Q
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.permissions import forbidden
from apps.accounts.roles import ANY_ROLE, EDITOR, OPERATOR
from apps.agents.auth import AgentTokenAuthentication, IsAgent
from apps.audit.services import client_ip
from apps.configs import services
from apps.configs.errors import NoConfigYet
from apps.configs.models import ConfigVersion
from apps.configs.serializers import (
    AdminConfigSerializer,
    ConfigSerializer,
    ConfigWriteSerializer,
    HistoryEntrySerializer,
    RollbackSerializer,
    StaleVersionSerializer,
    VersionQuerySerializer,
    VersionStateSerializer,
)
from apps.configs.watch import etag_matches
from apps.rollouts.services import target_of

ERRORS = {
    400: OpenApiResponse(description="Invalid input; nothing was stored."),
    401: OpenApiResponse(description="Missing or invalid admin JWT."),
}


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
    description="A rollout is rolling or paused; promote it to the end or abort it first."
)


def _written(config: ConfigVersion, created: bool) -> Response:
    return Response(
        AdminConfigSerializer(config).data,
        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        headers={"ETag": f'"{config.version}"'},
    )


class ConfigAdminView(APIView):
    """The current configuration, for admins."""

    role_rules = {"GET": ANY_ROLE, "POST": EDITOR, "PUT": EDITOR}

    @extend_schema(
        tags=["config"],
        summary="Current configuration",
        description='Sends `ETag: "<version>"`; give it back as `If-Match` on a change to refuse '
        "the change (412) if someone else changed the configuration meanwhile.",
        responses={
            200: AdminConfigSerializer,
            401: ERRORS[401],
            403: forbidden(ANY_ROLE),
            404: OpenApiResponse(),
        },
    )
    def get(self, request):
        config = services.get_current_config()
        if config is None:
            raise NoConfigYet()
        return Response(AdminConfigSerializer(config).data, headers={"ETag": f'"{config.version}"'})

    @extend_schema(
        tags=["config"],
        summary="Create a configuration version",
        description="Both fields required. 201 with a new version; 200 with the current config "
        "when the content equals it. With `rollout`, the version reaches the agents in stages "
        "(see GET /config/admin/rollout). 409 while a rollout is rolling or paused.",
        request=ConfigWriteSerializer,
        parameters=[IF_MATCH],
        responses={
            201: AdminConfigSerializer,
            200: AdminConfigSerializer,
            409: ROLLOUT_ACTIVE,
            412: STALE,
            **ERRORS,
            403: forbidden(EDITOR),
        },
    )
    def post(self, request):
        serializer = ConfigWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return _written(
            *services.publish_config(
                actor=request.user,
                source_ip=client_ip(request),
                if_match=request.headers.get("If-Match"),
                **serializer.validated_data,
            )
        )

    @extend_schema(
        tags=["config"],
        summary="Change the configuration",
        description="Any subset of the fields. A new version only when something changed. "
        "`rollout` as for POST; 409 while a rollout is rolling or paused.",
        request=ConfigWriteSerializer(partial=True),
        parameters=[IF_MATCH],
        responses={
            200: AdminConfigSerializer,
            404: OpenApiResponse(),
            409: ROLLOUT_ACTIVE,
            412: STALE,
            **ERRORS,
            403: forbidden(EDITOR),
        },
    )
    def put(self, request):
        serializer = ConfigWriteSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        config, _ = services.update_config(
            actor=request.user,
            source_ip=client_ip(request),
            if_match=request.headers.get("If-Match"),
            **serializer.validated_data,
        )
        return Response(AdminConfigSerializer(config).data, headers={"ETag": f'"{config.version}"'})


class ConfigHistoryView(generics.ListAPIView):
    """Every version, newest first, with the fields each one changed."""

    serializer_class = HistoryEntrySerializer
    queryset = ConfigVersion.objects.select_related("created_by").order_by("-version")
    role_rules = {"GET": ANY_ROLE}

    @extend_schema(
        tags=["config"],
        summary="Version history",
        responses={200: HistoryEntrySerializer(many=True), 403: forbidden(ANY_ROLE)},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def paginate_queryset(self, queryset):
        page = super().paginate_queryset(queryset)
        if page:
            wanted = {entry.version - 1 for entry in page}
            previous = {
                c.version: c
                for c in ConfigVersion.objects.filter(Q(version__in=wanted)).only(
                    "version", "config_url", "pooling_interval"
                )
            }
            for entry in page:
                entry.changed = services.changed_fields(entry, previous.get(entry.version - 1))
        return page


class ConfigRollbackView(APIView):
    role_rules = {"POST": OPERATOR}

    @extend_schema(
        tags=["config"],
        summary="Roll back to a version",
        description="Makes a new version whose content is version N's (201), or answers 200 "
        "when N's content is already current. Goes to every agent at once and aborts a rollout "
        "in progress: the emergency path.",
        request=RollbackSerializer,
        responses={
            201: AdminConfigSerializer,
            200: AdminConfigSerializer,
            404: OpenApiResponse(description="Unknown version."),
            **ERRORS,
            403: forbidden(OPERATOR),
        },
    )
    def post(self, request):
        serializer = RollbackSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return _written(
            *services.rollback_config(
                version=serializer.validated_data["version"],
                actor=request.user,
                source_ip=client_ip(request),
            )
        )


class AgentEndpoint(APIView):
    authentication_classes = [AgentTokenAuthentication]
    permission_classes = [IsAgent]


class ConfigVersionView(AgentEndpoint):
    @extend_schema(
        tags=["agent"],
        summary="Current version and polling interval",
        parameters=[VersionQuerySerializer],
        responses={
            200: VersionStateSerializer,
            400: OpenApiResponse(description="Bad version or wait."),
            401: OpenApiResponse(description="Not an active agent's token."),
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
        return Response(target_of(services.get_current_state(), agent.pk, agent.labels))


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
            401: OpenApiResponse(description="Not an active agent's token."),
            404: OpenApiResponse(description="No configuration yet."),
        },
    )
    def get(self, request):
        agent = request.user
        version = target_of(services.get_current_state(), agent.pk, agent.labels)["version"]
        if version == 0:
            raise NoConfigYet()
        etag = f'"{version}"'
        if etag_matches(request.META.get("HTTP_IF_NONE_MATCH"), etag):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        config = ConfigVersion.objects.get(version=version)
        return Response(ConfigSerializer(config).data, headers={"ETag": etag})
