"""Comparing an application's environments, and promoting a version from one to another: the
content of a tested scope taken to the next, through the same change as any other (apps.changes
request_config_change: the target environment's approvals and default rollout plan apply)."""

from apps.accounts.roles import ANY_ROLE, has_role
from apps.configs.errors import NoConfigYet, UnknownVersion
from apps.configs.models import ConfigVersion
from apps.configs.services import CONTENT_FIELDS as FIELDS
from apps.configs.services import get_current_config
from apps.scopes.models import Scope
from controller_site.errors import ServiceError


class SameEnvironment(ServiceError):
    def __init__(self) -> None:
        super().__init__("Promote from another environment than the target's.")


class CannotRead(ServiceError):
    status_code = 403

    def __init__(self, scope: Scope) -> None:
        super().__init__(f"This needs one of the roles in {scope} to read its configuration.")


def readable_version(user, scope: Scope, version: int | None = None) -> ConfigVersion | None:
    """A scope's version `version` (its current one when None: None before the first), for a
    user who may read that scope (CannotRead otherwise); UnknownVersion for a number it never
    had."""
    if not has_role(user, ANY_ROLE, scope):
        raise CannotRead(scope)
    if version is None:
        return get_current_config(scope.pk)
    found = ConfigVersion.objects.filter(scope=scope, version=version).first()
    if found is None:
        raise UnknownVersion(version)
    return found


def compare(user, source: Scope, target: Scope) -> dict:
    """Two scopes' current configurations side by side, field by field."""
    left, right = readable_version(user, source), readable_version(user, target)

    def side(scope: Scope, config: ConfigVersion | None) -> dict:
        return {
            "environment": scope.environment.name,
            "version": config.version if config else None,
            **{field: getattr(config, field) if config else None for field in FIELDS},
        }

    fields = [
        {"field": field, "from": getattr(left, field, None), "to": getattr(right, field, None)}
        for field in FIELDS
    ]
    differences = [entry for entry in fields if entry["from"] != entry["to"]]
    return {
        "application": source.application.name,
        "from": side(source, left),
        "to": side(target, right),
        "fields": fields,
        "differences": [entry["field"] for entry in differences],
        "same": not differences,
    }


def promotion_content(user, source: Scope, target: Scope, version: int | None) -> dict:
    """The content a promotion from `source` (its version `version`, or its current one) asks
    for in `target`."""
    if source.pk == target.pk:
        raise SameEnvironment()
    config = readable_version(user, source, version)
    if config is None:
        raise NoConfigYet()
    return {field: getattr(config, field) for field in FIELDS}
