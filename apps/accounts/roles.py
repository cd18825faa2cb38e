"""The four roles and what each may do: one table, read by the API's permission classes, the
admin and the commands alike.

A role is a Django group of the same name, made by a migration. Superusers hold every power
without being in any group. Every role may read: the API's GET endpoints and the admin's pages,
read-only; the viewer may do nothing more.
"""

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
        "changes.view_scheduledchange",
        "agents.view_agent",
        "agents.view_registrationtoken",
        "audit.view_auditentry",
        "scopes.view_application",
        "scopes.view_environment",
        # Everyone with a role makes and revokes API tokens of their own (never beyond it).
        "accounts.view_apitoken",
    }
)
ADMIN_PERMISSIONS = {
    VIEWER: _READ,
    EDITOR: _READ,
    APPROVER: _READ,
    # Operators look after the fleet: they may rename an agent, delete an unused token and add
    # an application. An environment's rules (how many approvers) are a superuser's.
    OPERATOR: _READ
    | {
        "agents.change_agent",
        "agents.delete_registrationtoken",
        "scopes.add_application",
        "scopes.change_application",
        # Webhooks are an operator's alone: their URLs and deliveries name outside systems.
        "webhooks.view_webhookendpoint",
        "webhooks.view_delivery",
    },
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


def grants_of(user) -> list[tuple[str, int | None, int | None]]:
    """The user's roles held in part of the fleet: (role, application id, environment id), an
    id None for "every" (apps.accounts.models.ScopedRole)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return []
    cached = getattr(user, "_scoped_grants", None)
    if cached is None:
        cached = user._scoped_grants = list(
            user.scoped_roles.values_list("role", "application_id", "environment_id")
        )
    return cached


def has_role(user, role: str, scope=None) -> bool:
    """Whether the user may do what `role` (or ANY_ROLE, or SUPERUSER) allows: everywhere, or,
    for an action on `scope` (a Scope), there. Reading (ANY_ROLE) where no scope is concerned
    (the audit log, the list of applications) needs a role anywhere."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    if role == SUPERUSER:
        return False
    held = roles_of(user)
    if bool(held) if role == ANY_ROLE else role in held:
        return True
    grants = grants_of(user)
    if scope is None:
        return role == ANY_ROLE and bool(grants)
    return any(
        role in (ANY_ROLE, granted)
        and application in (None, scope.application_id)
        and environment in (None, scope.environment_id)
        for granted, application, environment in grants
    )


def has_role_somewhere(user, role: str) -> bool:
    """Whether the user holds `role` everywhere or in some part of the fleet: what the admin
    asks before offering an action whose object (a version, a rollout, an agent) decides the
    scope, where has_role is asked again with it."""
    if has_role(user, role):
        return True
    return role not in (ANY_ROLE, SUPERUSER) and any(
        granted == role for granted, _, _ in grants_of(user)
    )


def role_needed_message(role: str) -> str:
    if role == ANY_ROLE:
        return f"This needs one of the roles {', '.join(ROLES)}."
    if role == SUPERUSER:
        return "Only a superuser may do this."
    return f"This needs the {role} role."
