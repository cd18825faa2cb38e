"""Password authentication with the login throttle, for every door that checks a password with
a request at hand: POST /login and the admin's login page."""

from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied

from apps.accounts import services
from apps.accounts.roles import ADMIN_PERMISSIONS, VIEWER, grants_of, roles_of
from controller_site.request_info import client_ip

# Set on the request when the throttle refused the attempt: the seconds to wait.
RETRY_AFTER_ATTRIBUTE = "login_retry_after"


class RoleBackend(ModelBackend):
    """Django's permissions from the roles table instead of per-group rows, so the admin and the
    API cannot drift apart and a role means the same on every installation."""

    def get_group_permissions(self, user_obj, obj=None) -> set[str]:
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        granted: set[str] = set()
        for role in roles_of(user_obj):
            granted |= ADMIN_PERMISSIONS[role]
        if grants_of(user_obj):
            # A role in part of the fleet reads the admin's lists; what it may change there is
            # asked per object, in its scope (has_role with the object's scope), never by these
            # model-wide permissions.
            granted |= ADMIN_PERMISSIONS[VIEWER]
        return granted


class ThrottledRoleBackend(RoleBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            # Management commands and tests that log in directly: no client to throttle.
            return super().authenticate(request, username, password, **kwargs)
        email = username if username is not None else kwargs.get("email")
        if email is None or password is None:
            return None
        subjects = services.login_subjects(ip=client_ip(request), email=str(email))
        wait = services.reserve_login(subjects)
        if wait is not None:
            setattr(request, RETRY_AFTER_ATTRIBUTE, wait)
            # Stops authenticate() here: no other backend gets to check the password.
            raise PermissionDenied("too many failed logins")
        user = super().authenticate(request, username, password, **kwargs)
        if user is not None:
            services.release_login(subjects)
        return user
