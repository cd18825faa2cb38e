"""GET/POST /tokens and DELETE /tokens/{id}: the API tokens pipelines use (api_tokens.py).

A person manages tokens with their own login; a token cannot make or revoke tokens."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import api_tokens
from apps.accounts.models import ApiToken, User
from apps.accounts.permissions import RoleRequiredSerializer
from apps.accounts.roles import ANY_ROLE, ROLES
from apps.scopes.errors import UnknownApplication, UnknownEnvironment
from apps.scopes.services import get_application, get_environment
from controller_site.request_info import client_ip


class TokenRequestSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    role = serializers.ChoiceField(choices=ROLES)
    application = serializers.CharField(
        required=False, allow_null=True, default=None, help_text="Null or left out: every one."
    )
    environment = serializers.CharField(
        required=False, allow_null=True, default=None, help_text="Null or left out: every one."
    )
    expires_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        default=None,
        help_text="At most a year ahead; 90 days when left out.",
    )
    user = serializers.EmailField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Whose token (a superuser only); the caller's when left out.",
    )


class TokenSerializer(serializers.ModelSerializer):
    user = serializers.EmailField(source="user.email")
    created_by = serializers.EmailField(source="created_by.email", allow_null=True)
    application = serializers.CharField(source="application.name", allow_null=True)
    environment = serializers.CharField(source="environment.name", allow_null=True)

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "role",
            "application",
            "environment",
            "user",
            "created_by",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
        ]


class IssuedTokenSerializer(TokenSerializer):
    token = serializers.CharField(help_text="The secret, `dcs_...`: shown this once only.")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]


def refuse_tokens(request) -> None:
    """Tokens are made and revoked by people, never by another token."""
    if isinstance(request.auth, ApiToken):
        raise PermissionDenied("An API token cannot make or revoke tokens; log in as a person.")


def named(getter, name: str | None, field: str):
    if name is None:
        return None
    try:
        return getter(name)
    except (UnknownApplication, UnknownEnvironment) as exc:
        raise ValidationError({field: [str(exc)]}) from None


class TokenListView(APIView):
    role_rules = {"GET": ANY_ROLE, "POST": ANY_ROLE}

    @extend_schema(
        tags=["tokens"],
        summary="API tokens",
        description="The caller's tokens; a superuser's list holds everyone's. The secrets "
        "are never listed.",
        responses={200: TokenSerializer(many=True)},
    )
    def get(self, request):
        refuse_tokens(request)
        tokens = ApiToken.objects.select_related("user", "created_by", "application", "environment")
        if not request.user.is_superuser:
            tokens = tokens.filter(user=request.user)
        return Response(TokenSerializer(tokens, many=True).data)

    @extend_schema(
        tags=["tokens"],
        summary="Make an API token",
        description="For the caller (a superuser may name another user). The token holds one "
        "role in the whole fleet, one application, one environment or one scope, never more "
        "than its user and its creator hold; its secret is answered once. Audited.",
        request=TokenRequestSerializer,
        responses={
            201: IssuedTokenSerializer,
            400: OpenApiResponse(description="A bad field; nothing was stored."),
            403: RoleRequiredSerializer,
        },
    )
    def post(self, request):
        refuse_tokens(request)
        body = TokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        user = request.user
        if data["user"] is not None:
            user = User.objects.filter(email__iexact=data["user"]).first()
            if user is None:
                raise ValidationError({"user": [f"No user {data['user']}."]})
        try:
            token, secret = api_tokens.issue_api_token(
                creator=request.user,
                user=user,
                name=data["name"],
                role=data["role"],
                application=named(get_application, data["application"], "application"),
                environment=named(get_environment, data["environment"], "environment"),
                expires_at=data["expires_at"],
                source_ip=client_ip(request),
            )
        except api_tokens.TokenRefused as exc:
            if exc.forbidden:
                raise PermissionDenied(str(exc)) from None
            raise ValidationError({"expires_at": [str(exc)]}) from None
        token.token = secret
        return Response(IssuedTokenSerializer(token).data, status=status.HTTP_201_CREATED)


class TokenView(APIView):
    role_rules = {"DELETE": ANY_ROLE}

    @extend_schema(
        tags=["tokens"],
        summary="Revoke an API token",
        description="Refused from its next call on. The token's user or a superuser. Audited.",
        responses={204: None, 404: OpenApiResponse(description="No such token of the caller.")},
    )
    def delete(self, request, token_id: int):
        refuse_tokens(request)
        tokens = ApiToken.objects.select_related("user")
        if not request.user.is_superuser:
            tokens = tokens.filter(user=request.user)
        token = tokens.filter(pk=token_id).first()
        if token is None:
            raise NotFound(f"No API token {token_id} of yours.")
        api_tokens.revoke_api_token(token, actor=request.user, source_ip=client_ip(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
