"""The admin's JWT on the API: refused once the password it was issued under has changed."""

from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import InvalidToken

from apps.accounts.services import PASSWORD_CLAIM, password_stamp


class AdminJWTAuthentication(JWTAuthentication):
    def get_user(self, validated_token):
        user = super().get_user(validated_token)
        if validated_token.get(PASSWORD_CLAIM) != password_stamp(user):
            raise InvalidToken("The password has changed since this token was issued.")
        return user
