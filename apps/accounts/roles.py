"""The four roles and what each may do: one table, read by the API's permission classes, the
admin and the commands alike.

A role is a Django group of the same name, made by a migration. Superusers hold every power
without being in any group. Every role may read: the API's GET endpoints and the admin's pages,
read-only; the viewer may do nothing more.
"""

from django.contrib.auth.backends import ModelBackend

VIEWER = "viewer"
EDITOR = "editor"
APPROVER = "approver"
OPERATOR = "operator"
ROLES = (VIEWER, EDITOR, APPROVER, OPERATOR)
# The pseudo-role of the powers no group grants (an emergency publish): only superusers.
SUPERUSER = "superuser"
# What an endpoint that only reads asks for: any of the roles.
ANY_ROLE = "any"

ROLE_DESCRIPTIONS = {
    VIEWER: "read everything: the API's GET endpoints, the admin read-only",
    EDITOR: "propose configuration changes (and publish directly while approvals are off)",
    APPROVER: "approve or reject change requests, never their own",
    OPERATOR: "roll back, steer rollouts, revoke agents, issue registration tokens",
}

# The Django permissions each role brings to the admin. Reading is every role's; the actions
# (publish, approve, roll back, revoke, issue) are checked against the roles themselves.
_READ = frozenset(
    {
        "configs.view_configversion",
        "rollouts.view_rollout",
        "changes.view_changerequest",
        "agents.view_agent",
        "agents.view_registrationtoken",
        "audit.view_auditentry",
    }
)
ADMIN_PERMISSIONS = {
    VIEWER: _READ,
    EDITOR: _READ,
    APPROVER: _READ,
    # Operators look after the fleet: they may rename an agent and delete an unused token.
    OPERATOR: _READ | {"agents.change_agent", "agents.delete_registrationtoken"},
}


def roles_of(user) -> list[str]:
    """The user's roles in the table's order; a superuser has every one."""
    if user is None or not user.is_authenticated or not user.is_active:
        return []
    if user.is_superuser:
        return list(ROLES)
    cached = getattr(user, "_role_names", None)
    if cached is None:
        names = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        cached = user._role_names = [role for role in ROLES if role in names]
    return cached


def has_role(user, role: str) -> bool:
    """Whether the user may do what `role` (or ANY_ROLE, or SUPERUSER) allows."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    if role == SUPERUSER:
        return False
    held = roles_of(user)
    return bool(held) if role == ANY_ROLE else role in held


def role_needed_message(role: str) -> str:
    if role == ANY_ROLE:
        return f"This needs one of the roles {', '.join(ROLES)}."
    if role == SUPERUSER:
        return "Only a superuser may do this."
    return f"This needs the {role} role."


class RoleBackend(ModelBackend):
    """Django's permissions from the roles table instead of per-group rows, so the admin and the
    API cannot drift apart and a role means the same on every installation."""

    def get_group_permissions(self, user_obj, obj=None) -> set[str]:
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        granted: set[str] = set()
        for role in roles_of(user_obj):
            granted |= ADMIN_PERMISSIONS[role]
        return granted
