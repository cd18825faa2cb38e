"""How the API knows its caller: the admin's JWT, refused once the password it was issued under has
changed, or once its session has been logged out; and a pipeline's API token."""

from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import InvalidToken

from apps.accounts import api_tokens
from apps.accounts.services import PASSWORD_CLAIM, SESSION_CLAIM, password_stamp, session_ended
from controller_site.tokens import API_TOKEN_PREFIX, bearer_token


class AdminJWTAuthentication(JWTAuthentication):
    def get_user(self, validated_token):
        user = super().get_user(validated_token)
        if validated_token.get(PASSWORD_CLAIM) != password_stamp(user):
            raise InvalidToken("The password has changed since this token was issued.")
        if session_ended(validated_token.get(SESSION_CLAIM)):
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
