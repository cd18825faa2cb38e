from django.conf import settings
from django.shortcuts import render
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.exceptions import InvalidToken, TokenError
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer
from rest_framework_simplejwt.tokens import RefreshToken
from rest_framework_simplejwt.views import TokenObtainPairView

from apps.accounts import services
from apps.accounts.backends import RETRY_AFTER_ATTRIBUTE
from apps.accounts.models import User
from apps.accounts.roles import ROLE_DESCRIPTIONS, ROLES, roles_of
from controller_site.request_info import client_ip


class LoginSerializer(TokenObtainPairSerializer):
    def validate(self, attrs):
        attrs[self.username_field] = attrs[self.username_field].strip().lower()
        request = self.context.get("request")
        try:
            # A failure is recorded by the user_login_failed signal that authenticate() sends.
            super(TokenObtainPairSerializer, self).validate(attrs)
        except AuthenticationFailed:
            wait = getattr(request, RETRY_AFTER_ATTRIBUTE, None)
            if wait is not None:
                raise Throttled(wait, "Too many failed logins; try again later.") from None
            raise
        services.record_login(self.user, source_ip=client_ip(request), via="api")
        refresh = services.issue_tokens(self.user)
        lifetime = settings.SIMPLE_JWT["ACCESS_TOKEN_LIFETIME"]
        return {
            "access": str(refresh.access_token),
            "refresh": str(refresh),
            "token_type": "Bearer",
            "expires_in": int(lifetime.total_seconds()),
            # Read afresh on every request: a role given or taken counts from the next call.
            "roles": roles_of(self.user),
            "grants": services.scoped_grants(self.user),
            "superuser": self.user.is_superuser,
        }


class GrantSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=ROLES)
    application = serializers.CharField(allow_null=True, help_text="Null: every application.")
    environment = serializers.CharField(allow_null=True, help_text="Null: every environment.")


class LoginResponseSerializer(serializers.Serializer):
    access = serializers.CharField()
    refresh = serializers.CharField()
    token_type = serializers.CharField()
    expires_in = serializers.IntegerField(help_text="Seconds until the access token expires.")
    roles = serializers.ListField(
        child=serializers.ChoiceField(choices=ROLES),
        help_text="The caller's roles; a superuser has every one. Empty: the caller may log in "
        "and do nothing else.",
    )
    grants = GrantSerializer(
        many=True,
        help_text="The roles the caller holds in part of the fleet only, each with its scope; "
        "`roles` are those held everywhere.",
    )
    superuser = serializers.BooleanField(
        help_text="Superusers may do everything, including an emergency publish."
    )


class RefreshResponseSerializer(serializers.Serializer):
    access = serializers.CharField()
    refresh = serializers.CharField()


class LoginView(TokenObtainPairView):
    serializer_class = LoginSerializer

    @extend_schema(
        tags=["auth"],
        summary="Log in with email and password",
        description=(
            "Failed logins are counted per client address and per account "
            "(LOGIN_FAILURE_RATE, 10 a minute by default); past the limit every attempt, the "
            "right password included, gets 429 with Retry-After until the window ends."
        ),
        responses={
            200: LoginResponseSerializer,
            400: OpenApiResponse(description="Malformed body."),
            401: OpenApiResponse(description="Wrong email or password (same answer for both)."),
            429: OpenApiResponse(
                description="Too many failed attempts from this client or for this account."
            ),
        },
    )
    def post(self, request, *args, **kwargs):
        return super().post(request, *args, **kwargs)


class RefreshBodySerializer(serializers.Serializer):
    refresh = serializers.CharField()


def claim_refresh_token(text: str) -> tuple[User, RefreshToken]:
    """Check a refresh token and use it up, atomically: of many requests presenting the same
    token at once, exactly one gets the user (and the token); the others get 401."""
    try:
        refresh = RefreshToken(text)
    except TokenError as exc:
        raise InvalidToken(str(exc)) from None
    user = User.objects.filter(pk=refresh.get("user_id")).first()
    if user is None or not user.is_active:
        raise AuthenticationFailed("No active account found for the given token.")
    if refresh.get(services.PASSWORD_CLAIM) != services.password_stamp(user):
        raise InvalidToken("The password has changed since this token was issued.")
    # The blacklist entry is unique per token: the insert that wins is the one claim.
    _, claimed = refresh.blacklist()
    if not claimed:
        raise InvalidToken("Token is blacklisted")
    return user, refresh


class RefreshView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=["auth"],
        summary="Exchange a refresh token for new tokens",
        description=(
            "The refresh token is rotated: the one sent is refused afterwards. Of concurrent "
            "requests with the same token exactly one succeeds."
        ),
        request=RefreshBodySerializer,
        responses={
            200: RefreshResponseSerializer,
            400: OpenApiResponse(description="Malformed body."),
            401: OpenApiResponse(
                description="Expired, invalid, already used, logged out, or issued before the "
                "password was changed."
            ),
        },
    )
    def post(self, request):
        body = RefreshBodySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        user, used = claim_refresh_token(body.validated_data["refresh"])
        refresh = services.issue_tokens(user, session=used.get(services.SESSION_CLAIM))
        services.record_token_refresh(str(refresh), source_ip=client_ip(request))
        return Response({"access": str(refresh.access_token), "refresh": str(refresh)})

    def get_authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class LogoutView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=["auth"],
        summary="Log out: end the session of a refresh token",
        description=(
            "The refresh token is refused from now on, and so is every access token of its "
            "login session (issued at the login or by a refresh since), until it would have "
            "expired. Changing the password ends every session at once."
        ),
        request=RefreshBodySerializer,
        responses={
            204: None,
            400: OpenApiResponse(description="Malformed body."),
            401: OpenApiResponse(description="Expired, invalid or already used."),
        },
    )
    def post(self, request):
        body = RefreshBodySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        _, refresh = claim_refresh_token(body.validated_data["refresh"])
        services.end_session(refresh)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def get_authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


def permission_denied(request, exception=None):
    """Django's 403 page, with the reason the admin gave (the role needed) and the roles table."""
    reason = exception.args[0] if exception is not None and exception.args else ""
    context = {"exception": reason, "roles": list(ROLE_DESCRIPTIONS.items())}
    return render(request, "403.html", context, status=403)
