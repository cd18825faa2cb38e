from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import generics, serializers, status
from rest_framework.exceptions import NotAuthenticated
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.auth import AdminJWTAuthentication
from apps.accounts.roles import ANY_ROLE, OPERATOR
from apps.agents import services
from apps.agents.auth import AgentEndpoint
from apps.agents.models import Agent
from apps.agents.serializers import (
    AgentLabelsSerializer,
    AgentSerializer,
    HeartbeatSerializer,
    IssueTokenSerializer,
    RegisteredSerializer,
    RegisterSerializer,
    RegistrationTokenSerializer,
    TokenQuerySerializer,
)
from apps.configs.services import get_current_state
from apps.scopes.services import named_scope
from apps.scopes.views import ActsOnScope
from controller_site.request_info import client_ip
from controller_site.tokens import bearer_token
from protocol.labels import InvalidLabels, parse_label_pairs


class RegistrationTokenView(ActsOnScope, APIView):
    """Issues registration tokens of the scope in the path, or, on the seed's route, of the
    scope a POST body names (`application` and `environment`, each the default's when left
    out), or of the default scope."""

    # The JWT only, never the admin's session cookie: this GET (kept as the seed has it) issues
    # a credential, and a cross-site link or image would otherwise carry the cookie and make it
    # issue tokens. The admin issues tokens from its own page, behind a CSRF-checked POST.
    authentication_classes = [AdminJWTAuthentication]
    # A GET that makes something: issuing tokens is an operator's power, not a read.
    role_rules = {"GET": OPERATOR, "POST": OPERATOR}

    def acting_scope(self):
        # Asked by HasRole before the body is validated: names of the wrong type leave the
        # default scope here, and the serializer refuses them (400).
        if not hasattr(self, "_acting_scope") and self.request.method == "POST":
            data = self.request.data if isinstance(self.request.data, dict) else {}
            application, environment = data.get("application"), data.get("environment")
            names = [name for name in (application, environment) if isinstance(name, str)]
            if names and self.scope_names[0] is None:
                self._acting_scope = named_scope(
                    application if isinstance(application, str) else None,
                    environment if isinstance(environment, str) else None,
                )
        return super().acting_scope()

    @extend_schema(
        tags=["agents"],
        summary="Issue a one-time registration token",
        parameters=[TokenQuerySerializer],
        responses={
            200: RegistrationTokenSerializer,
            400: OpenApiResponse(),
        },
    )
    def get(self, request):
        query = TokenQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        token, record = services.issue_registration_token(
            scope_id=self.scope_id,
            actor=request.user,
            ttl=query.validated_data.get("ttl"),
            source_ip=client_ip(request),
        )
        return Response(_token_answer(token, record))

    @extend_schema(
        tags=["agents"],
        summary="Issue a one-time registration token, with the labels its agent gets",
        description="The agent that registers with the token gets `labels`. Its own labels "
        "(`run_agent --label`) are added only with `allow_agent_labels`, and never over a name "
        "the token binds; without it they are left out (and the registration's audit entry "
        "names them).",
        request=IssueTokenSerializer,
        responses={
            201: RegistrationTokenSerializer,
            400: OpenApiResponse(),
            404: OpenApiResponse(
                description="The body names an application or environment that does not exist."
            ),
        },
    )
    def post(self, request):
        body = IssueTokenSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        values = dict(body.validated_data)
        scope = self.acting_scope()
        for field, name in (
            ("application", scope.application.name),
            ("environment", scope.environment.name),
        ):
            if values.pop(field, name) != name:
                raise serializers.ValidationError(
                    {field: [f"This route issues tokens of {scope}; leave {field} out."]}
                )
        token, record = services.issue_registration_token(
            scope_id=self.scope_id, actor=request.user, source_ip=client_ip(request), **values
        )
        return Response(_token_answer(token, record), status=status.HTTP_201_CREATED)


def _token_answer(token: str, record) -> dict:
    return {
        "registration_token": token,
        "expires_at": record.expires_at,
        "labels": record.labels,
        "allow_agent_labels": record.allow_agent_labels,
    }


class RegisterAgentView(APIView):
    # The registration token is checked by the service, which consumes it atomically.
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=["agents"],
        summary="Register an agent with a registration token",
        description="Send `Authorization: Bearer <registration token>`. The token is used up.",
        request=RegisterSerializer,
        responses={
            201: RegisteredSerializer,
            400: OpenApiResponse(),
            401: OpenApiResponse(description="Missing or invalid credentials."),
        },
        auth=[{"registrationToken": []}],
    )
    def post(self, request):
        token = bearer_token(request.META.get("HTTP_AUTHORIZATION"))
        if token is None:
            raise NotAuthenticated("Send the registration token as 'Authorization: Bearer ...'.")
        body = RegisterSerializer(data=request.data if request.body else {})
        body.is_valid(raise_exception=True)
        agent, agent_token = services.register_agent(
            token=token, source_ip=client_ip(request), **body.validated_data
        )
        return Response(
            {
                "agent_id": agent.pk,
                "agent_token": agent_token,
                "version_url": request.build_absolute_uri("/config/version"),
                "poll_url": request.build_absolute_uri("/config/agent"),
                "pooling_interval": get_current_state(agent.scope_id)["pooling_interval"],
                "labels": agent.labels,
            },
            status=status.HTTP_201_CREATED,
        )

    def get_authenticate_header(self, request) -> str:
        return 'Bearer realm="registration"'


class HeartbeatView(AgentEndpoint):
    """Served by the ASGI front under run_controller (batched writes, apps/agents/heartbeats.py);
    this view answers the same under WSGI and Django's test client, writing at once."""

    parser_classes = [JSONParser]

    @extend_schema(
        tags=["agent"],
        summary="Report what the agent applied",
        description="Answered 204 at once; under run_controller the report is written with the "
        "next batch (within HEARTBEAT_FLUSH_SECONDS, 0.1 s by default).",
        request=HeartbeatSerializer,
        responses={
            204: None,
            400: OpenApiResponse(),
            413: OpenApiResponse(description="The body is too large."),
            415: OpenApiResponse(description="The body is not JSON."),
        },
    )
    def post(self, request):
        body = HeartbeatSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.record_heartbeat(request.user, **body.validated_data)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    get=extend_schema(
        tags=["agents"],
        summary="Agents and what they run",
        parameters=[
            OpenApiParameter("status", enum=list(services.STATUSES), required=False),
            OpenApiParameter(
                "label",
                str,
                required=False,
                many=True,
                description="KEY=VALUE; only agents carrying that label. Repeat to require "
                "several.",
            ),
        ],
        responses={
            200: AgentSerializer(many=True),
            400: OpenApiResponse(),
        },
    )
)
class AgentListView(ActsOnScope, generics.ListAPIView):
    serializer_class = AgentSerializer
    queryset = Agent.objects.order_by("created_at")
    role_rules = {"GET": ANY_ROLE}

    def list(self, request, *args, **kwargs):
        wanted = request.query_params.get("status")
        if wanted is not None and wanted not in services.STATUSES:
            raise serializers.ValidationError({"status": [f"Must be one of {services.STATUSES}."]})
        try:
            labels = parse_label_pairs(request.query_params.getlist("label"))
        except InvalidLabels as exc:
            raise serializers.ValidationError({"label": [str(exc)]}) from None
        state, now = get_current_state(self.scope_id), timezone.now()
        agents = self.get_queryset().filter(scope_id=self.scope_id)
        if wanted is not None:
            agents = services.filter_by_status(agents, wanted, state, now)
        if labels:
            agents = services.filter_by_labels(agents, labels)
        page = self.paginate_queryset(agents)
        # The hits of the version each agent should run: during a rollout, its own target.
        targets = {agent.pk: services.target_version(agent, state) for agent in page}
        hits = services.hits_of(page, targets)
        for agent in page:
            agent.status = services.agent_status(agent, state, now)
            agent.target_version = targets[agent.pk]
            agent.target_hits = hits.get(str(agent.pk))
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


class AgentRevokeView(ActsOnScope, APIView):
    role_rules = {"POST": OPERATOR}

    @extend_schema(
        tags=["agents"],
        summary="Revoke an agent's token",
        request=None,
        responses={
            200: AgentSerializer,
            404: OpenApiResponse(),
        },
    )
    def post(self, request, agent_id):
        agent = get_object_or_404(Agent, pk=agent_id, scope_id=self.scope_id)
        services.revoke_agent(agent, actor=request.user, source_ip=client_ip(request))
        agent.refresh_from_db()
        agent.status = "revoked"
        agent.target_version = services.target_version(agent, get_current_state(self.scope_id))
        return Response(AgentSerializer(agent).data)


class AgentView(ActsOnScope, APIView):
    role_rules = {"PATCH": OPERATOR}

    @extend_schema(
        tags=["agents"],
        summary="Change an agent's labels",
        description="Replaces the agent's labels (they pick the canaries of a rollout); "
        "audited. The agent is answered by its new labels from its next request on, and a "
        "watch it holds is woken when they move its target. Labels an agent reports in its "
        "heartbeats change nothing.",
        request=AgentLabelsSerializer,
        responses={
            200: AgentSerializer,
            400: OpenApiResponse(),
            404: OpenApiResponse(),
        },
    )
    def patch(self, request, agent_id):
        agent = get_object_or_404(Agent, pk=agent_id, scope_id=self.scope_id)
        body = AgentLabelsSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.set_agent_labels(
            agent, body.validated_data["labels"], actor=request.user, source_ip=client_ip(request)
        )
        agent.refresh_from_db()
        state = get_current_state(self.scope_id)
        agent.status = services.agent_status(agent, state, timezone.now())
        agent.target_version = services.target_version(agent, state)
        agent.target_hits = services.hits_of([agent], {agent.pk: agent.target_version}).get(
            str(agent.pk)
        )
        return Response(AgentSerializer(agent).data)
