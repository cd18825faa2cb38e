"""The admin's JWT on the API: refused once the password it was issued under has changed, or once
its session has been logged out."""

from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import InvalidToken

from apps.accounts.services import PASSWORD_CLAIM, SESSION_CLAIM, password_stamp, session_ended


class AdminJWTAuthentication(JWTAuthentication):
    def get_user(self, validated_token):
        user = super().get_user(validated_token)
        if validated_token.get(PASSWORD_CLAIM) != password_stamp(user):
            raise InvalidToken("The password has changed since this token was issued.")
        if session_ended(validated_token.get(SESSION_CLAIM)):
            raise InvalidToken("This session has been logged out.")
        return user
