"""GET/POST /apps, GET/PATCH /apps/{app}, GET/POST /envs, GET/PATCH /envs/{env}.

Any role reads them. An operator (or a superuser) makes applications and changes their
description; environments are a superuser's: their rules decide how many approvers a change
needs, and an operator who could lower them would pass review by themselves."""

from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import generics, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.roles import ANY_ROLE, OPERATOR, SUPERUSER
from apps.configs import promotion
from apps.configs.serializers import compare_serializer
from apps.scopes import services
from apps.scopes.models import Application, Environment
from apps.scopes.serializers import (
    ApplicationChangeSerializer,
    ApplicationDetailSerializer,
    ApplicationSerializer,
    EnvironmentChangeSerializer,
    EnvironmentSerializer,
)
from apps.scopes.status import describe_application
from controller_site.request_info import client_ip


class ActsOnScope:
    """A view of a scope's routes. Under /apps/{application}/envs/{environment}/ it acts on
    that scope (404 naming an unknown application or environment); the seed's routes, with no
    names in their path, act on the default scope. A role held in the scope, in its application
    or its environment, or everywhere, allows it (HasRole)."""

    scope_names: tuple[str | None, str | None] = (None, None)

    def dispatch(self, request, *args, **kwargs):
        # The names are the scope's, not the handler's arguments.
        self.scope_names = (kwargs.pop("application", None), kwargs.pop("environment", None))
        return super().dispatch(request, *args, **kwargs)

    def acting_scope(self):
        if not hasattr(self, "_acting_scope"):
            application, environment = self.scope_names
            self._acting_scope = (
                services.default_scope()
                if application is None
                else services.get_scope(application, environment)
            )
        return self._acting_scope

    @property
    def scope_id(self) -> int:
        return self.acting_scope().pk


NAME_TAKEN = OpenApiResponse(description="The name is taken; nothing was changed.")
UNKNOWN = OpenApiResponse(description="No such application or environment; the answer names it.")


def _detail(application: Application) -> dict:
    application.environments = describe_application(application)
    return ApplicationDetailSerializer(application).data


@extend_schema_view(
    get=extend_schema(tags=["scopes"], summary="Applications"),
    post=extend_schema(
        tags=["scopes"],
        summary="Make an application",
        description="It is present in every environment at once, each a scope of its own with "
        "no version yet. Audited.",
        responses={201: ApplicationDetailSerializer, 400: OpenApiResponse(), 409: NAME_TAKEN},
    ),
)
class ApplicationListView(generics.ListAPIView):
    serializer_class = ApplicationSerializer
    queryset = Application.objects.order_by("name")
    role_rules = {"GET": ANY_ROLE, "POST": OPERATOR}

    def post(self, request):
        body = ApplicationSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        application = services.create_application(
            body.validated_data["name"],
            description=body.validated_data.get("description", ""),
            actor=request.user,
            source_ip=client_ip(request),
        )
        return Response(_detail(application), status=status.HTTP_201_CREATED)


class ApplicationView(APIView):
    role_rules = {"GET": ANY_ROLE, "PATCH": OPERATOR}

    @extend_schema(
        tags=["scopes"],
        summary="An application and each of its environments",
        description="Each environment's scope: its current version, its rollout's state and "
        "its agents by status.",
        responses={200: ApplicationDetailSerializer, 404: UNKNOWN},
    )
    def get(self, request, application: str):
        return Response(_detail(services.get_application(application)))

    @extend_schema(
        tags=["scopes"],
        summary="Change an application's description",
        request=ApplicationChangeSerializer,
        responses={200: ApplicationDetailSerializer, 400: OpenApiResponse(), 404: UNKNOWN},
    )
    def patch(self, request, application: str):
        found = services.get_application(application)
        body = ApplicationChangeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.change_application(
            found,
            description=body.validated_data["description"],
            actor=request.user,
            source_ip=client_ip(request),
        )
        return Response(_detail(found))


@extend_schema_view(
    get=extend_schema(tags=["scopes"], summary="Environments, in their order"),
    post=extend_schema(
        tags=["scopes"],
        summary="Make an environment",
        description="Every application is present in it at once. A superuser's: its rules "
        "decide how changes are reviewed there. Audited.",
        responses={201: EnvironmentSerializer, 400: OpenApiResponse(), 409: NAME_TAKEN},
    ),
)
class EnvironmentListView(generics.ListAPIView):
    serializer_class = EnvironmentSerializer
    queryset = Environment.objects.order_by("order", "name")
    role_rules = {"GET": ANY_ROLE, "POST": SUPERUSER}

    def post(self, request):
        body = EnvironmentSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        policy = dict(body.validated_data)
        environment = services.create_environment(
            policy.pop("name"), actor=request.user, source_ip=client_ip(request), **policy
        )
        return Response(EnvironmentSerializer(environment).data, status=status.HTTP_201_CREATED)


class EnvironmentView(APIView):
    role_rules = {"GET": ANY_ROLE, "PATCH": SUPERUSER}

    @extend_schema(
        tags=["scopes"],
        summary="An environment and its rules",
        responses={200: EnvironmentSerializer, 404: UNKNOWN},
    )
    def get(self, request, environment: str):
        return Response(EnvironmentSerializer(services.get_environment(environment)).data)

    @extend_schema(
        tags=["scopes"],
        summary="Change an environment's rules",
        description="Any of order, approvals_required and default_rollout; the next change "
        "made there follows them. Audited, with each field's before and after.",
        request=EnvironmentChangeSerializer,
        responses={200: EnvironmentSerializer, 400: OpenApiResponse(), 404: UNKNOWN},
    )
    def patch(self, request, environment: str):
        found = services.get_environment(environment)
        body = EnvironmentChangeSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        services.change_environment(
            found, actor=request.user, source_ip=client_ip(request), **body.validated_data
        )
        return Response(EnvironmentSerializer(found).data)


class ApplicationCompareView(APIView):
    role_rules = {"GET": ANY_ROLE}

    @extend_schema(
        tags=["scopes"],
        summary="Compare two environments of an application",
        description="Their current configurations field by field: `differences` names the "
        "fields that differ. Needs a role in both scopes.",
        parameters=[
            OpenApiParameter("from", str, required=True, description="An environment's name."),
            OpenApiParameter("to", str, required=True, description="An environment's name."),
        ],
        responses={200: compare_serializer(), 400: OpenApiResponse(), 404: UNKNOWN},
    )
    def get(self, request, application: str):
        names = [request.query_params.get(side, "").strip() for side in ("from", "to")]
        missing = {
            side: ["Name an environment."]
            for side, name in zip(("from", "to"), names, strict=True)
            if not name
        }
        if missing:
            raise ValidationError(missing)
        found = services.get_application(application)
        source, target = (services.get_scope(found.name, name) for name in names)
        return Response(promotion.compare(request.user, source, target))
