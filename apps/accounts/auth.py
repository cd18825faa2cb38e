"""How the API knows its caller: the admin's JWT, refused once the password it was issued under has
changed, or once its session has been logged out; and a pipeline's API token."""

from django.db.models import Exists, Value
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import InvalidToken
from rest_framework_simplejwt.settings import api_settings

from apps.accounts import api_tokens
from apps.accounts.models import EndedSession
from apps.accounts.services import PASSWORD_CLAIM, SESSION_CLAIM, password_stamp
from controller_site.tokens import API_TOKEN_PREFIX, bearer_token


class AdminJWTAuthentication(JWTAuthentication):
    def get_user(self, validated_token):
        """simplejwt's lookup (no id claim, unknown or inactive user refused), with whether the
        token's session was logged out read in the same query: every admin request pays it."""
        try:
            user_id = validated_token[api_settings.USER_ID_CLAIM]
        except KeyError:
            raise InvalidToken("Token contained no recognizable user identification") from None
        session = validated_token.get(SESSION_CLAIM)
        ended = Exists(EndedSession.objects.filter(session=session)) if session else Value(False)
        user = (
            self.user_model.objects.filter(**{api_settings.USER_ID_FIELD: user_id})
            .annotate(session_ended=ended)
            .first()
        )
        if user is None:
            raise AuthenticationFailed("User not found", code="user_not_found")
        if api_settings.CHECK_USER_IS_ACTIVE and not user.is_active:
            raise AuthenticationFailed("User is inactive", code="user_inactive")
        if validated_token.get(PASSWORD_CLAIM) != password_stamp(user):
            raise InvalidToken("The password has changed since this token was issued.")
        if user.session_ended:
            raise InvalidToken("This session has been logged out.")
        return user


class ApiTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer dcs_...`: a pipeline's API token (apps.accounts.api_tokens). Any
    other bearer token is left to the JWT authentication that follows."""

    def authenticate(self, request):
        secret = bearer_token(request.META.get("HTTP_AUTHORIZATION"))
        if secret is None or not secret.startswith(API_TOKEN_PREFIX):
            return None
        token = api_tokens.find_api_token(secret)
        if token is None:
            raise AuthenticationFailed(
                "This API token is unknown, expired or revoked, or its user no longer holds "
                "its role."
            )
        return api_tokens.acting_user(token), token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'
