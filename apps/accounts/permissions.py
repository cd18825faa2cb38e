"""The API's one permission class: each view names the role each of its methods needs."""

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers, status
from rest_framework.exceptions import APIException
from rest_framework.permissions import BasePermission

from apps.accounts.roles import ANY_ROLE, ROLES, SUPERUSER, has_role, role_needed_message


class RoleRequired(APIException):
    """403 that names the role the caller lacks, so a client can tell its user whom to ask."""

    status_code = status.HTTP_403_FORBIDDEN
    default_code = "role_required"

    def __init__(self, role: str, detail: str | None = None) -> None:
        super().__init__()
        self.detail = {"detail": detail or role_needed_message(role), "required_role": role}


class HasRole(BasePermission):
    """Allows a method when the user holds the role the view's `role_rules` names for it.

    A view without a rule for a method is open to superusers only: a new endpoint is closed
    until someone decides who may use it (and the URL-map test fails until then).
    """

    def has_permission(self, request, view) -> bool:
        user = request.user
        if user is None or not user.is_authenticated:
            # DRF answers 401 with the authentication challenge.
            return False
        role = rule_for(view, request.method)
        # The scope the view acts on, whose roles count too (apps.scopes.views).
        scope = view.acting_scope() if hasattr(view, "acting_scope") else None
        if has_role(user, role, scope):
            return True
        raise RoleRequired(role)


def rule_for(view, method: str) -> str:
    rules = getattr(view, "role_rules", {})
    if method in ("HEAD", "OPTIONS"):
        return rules.get(method, ANY_ROLE)
    return rules.get(method, SUPERUSER)


class RoleRequiredSerializer(serializers.Serializer):
    detail = serializers.CharField()
    required_role = serializers.ChoiceField(
        choices=[*ROLES, ANY_ROLE, SUPERUSER],
        help_text="The role that allows the call; `any` means any of the four roles.",
    )


def forbidden(role: str) -> OpenApiResponse:
    """The schema's 403 answer of an endpoint that needs `role`."""
    return OpenApiResponse(RoleRequiredSerializer, description=role_needed_message(role))
