from django.conf import settings
from django.shortcuts import render
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.throttling import SimpleRateThrottle
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer, TokenRefreshSerializer
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from apps.accounts import services
from apps.accounts.roles import ROLE_DESCRIPTIONS, ROLES, roles_of
from controller_site.request_info import client_ip


class LoginFailureThrottle(SimpleRateThrottle):
    """Counts failed logins per client address; only failures are recorded, by the view."""

    scope = "login_failures"

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def allow_request(self, request, view) -> bool:
        self.key = self.get_cache_key(request, view)
        self.history = self.cache.get(self.key) or []
        self.now = self.timer()
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        return len(self.history) < self.num_requests

    def record_failure(self) -> None:
        self.history.insert(0, self.now)
        self.cache.set(self.key, self.history, self.duration)


class LoginSerializer(TokenObtainPairSerializer):
    def validate(self, attrs):
        attrs[self.username_field] = attrs[self.username_field].strip().lower()
        data = super().validate(attrs)
        # A failure is recorded by the user_login_failed signal that authenticate() sends.
        services.record_login(
            self.user, source_ip=client_ip(self.context.get("request")), via="api"
        )
        lifetime = settings.SIMPLE_JWT["ACCESS_TOKEN_LIFETIME"]
        return {
            "access": data["access"],
            "refresh": data["refresh"],
            "token_type": "Bearer",
            "expires_in": int(lifetime.total_seconds()),
            # Read afresh on every request: a role given or taken counts from the next call.
            "roles": roles_of(self.user),
            "superuser": self.user.is_superuser,
        }


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
    superuser = serializers.BooleanField(
        help_text="Superusers may do everything, including an emergency publish."
    )


class RefreshResponseSerializer(serializers.Serializer):
    access = serializers.CharField()
    refresh = serializers.CharField()


class LoginView(TokenObtainPairView):
    serializer_class = LoginSerializer
    throttle_classes = [LoginFailureThrottle]

    @extend_schema(
        tags=["auth"],
        summary="Log in with email and password",
        responses={
            200: LoginResponseSerializer,
            400: OpenApiResponse(description="Malformed body."),
            401: OpenApiResponse(description="Wrong email or password (same answer for both)."),
            429: OpenApiResponse(description="Too many failed attempts from this client."),
        },
    )
    def post(self, request, *args, **kwargs):
        try:
            return super().post(request, *args, **kwargs)
        except AuthenticationFailed:
            for throttle in self.get_throttles():
                if isinstance(throttle, LoginFailureThrottle) and hasattr(throttle, "key"):
                    throttle.record_failure()
            raise

    def get_throttles(self):
        # One instance per request, so the failure is recorded on the one that looked.
        if not hasattr(self, "_throttles"):
            self._throttles = super().get_throttles()
        return self._throttles


class RefreshSerializer(TokenRefreshSerializer):
    def validate(self, attrs):
        data = super().validate(attrs)
        services.record_token_refresh(
            data.get("refresh", attrs["refresh"]), source_ip=client_ip(self.context.get("request"))
        )
        return data


class RefreshView(TokenRefreshView):
    serializer_class = RefreshSerializer

    @extend_schema(
        tags=["auth"],
        summary="Exchange a refresh token for new tokens",
        description="The refresh token is rotated: the one sent is refused afterwards.",
        responses={
            200: RefreshResponseSerializer,
            400: OpenApiResponse(),
            401: OpenApiResponse(description="Expired, invalid or already used."),
        },
    )
    def post(self, request, *args, **kwargs):
        return super().post(request, *args, **kwargs)


def permission_denied(request, exception=None):
    """Django's 403 page, with the reason the admin gave (the role needed) and the roles table."""
    reason = exception.args[0] if exception is not None and exception.args else ""
    context = {"exception": reason, "roles": list(ROLE_DESCRIPTIONS.items())}
    return render(request, "403.html", context, status=403)
