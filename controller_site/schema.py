"""The OpenAPI schema's parts shared by every app: the answers each kind of view gives alike,
and the post-processing of the whole document."""

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse

from apps.accounts.permissions import HasRole, forbidden, rule_for
from apps.agents.auth import AgentEndpoint

ADMIN_UNAUTHORIZED = OpenApiResponse(description="Missing or invalid admin JWT.")
AGENT_UNAUTHORIZED = OpenApiResponse(description="Not an active agent's token.")
UNKNOWN_SCOPE = OpenApiResponse(
    description="No such application or environment (the answer names which), or nothing of "
    "that id in this scope."
)


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's, with the answers every view of a kind gives added to those its
    `extend_schema` lists, so that a view names only its own: an admin's view (HasRole) answers
    401 without a valid JWT and 403 naming the role its `role_rules` ask for the method; an
    agent's view (AgentEndpoint) answers 401 without an active agent token. What a view lists
    for the same status wins."""

    def _get_response_bodies(self, direction="response"):
        # The step that turns a view's responses into the schema's. Not get_response_serializers:
        # extend_schema replaces that one with the view's own list.
        responses = super()._get_response_bodies(direction)
        for code, response in self.shared_responses().items():
            if code not in responses:
                responses[code] = self._get_response_for_code(response, code, direction=direction)
        return dict(sorted(responses.items()))

    def shared_responses(self) -> dict:
        if isinstance(self.view, AgentEndpoint):
            return {"401": AGENT_UNAUTHORIZED}
        shared = {}
        if HasRole in self.view.permission_classes:
            shared = {"401": ADMIN_UNAUTHORIZED, "403": forbidden(rule_for(self.view, self.method))}
        # A view of a scope (apps.scopes.views.ActsOnScope) under /apps/{app}/envs/{env}/.
        if hasattr(self.view, "acting_scope") and "{application}" in self.path:
            shared["404"] = UNKNOWN_SCOPE
        return shared


def document_invalid_page(result, generator, request, public):
    """Every paginated list answers 404 {"detail": "Invalid page."} for a page past the end or
    not a number (DRF's PageNumberPagination); say so wherever a `page` parameter is offered."""
    for path in result.get("paths", {}).values():
        for operation in path.values():
            if not isinstance(operation, dict):
                continue
            if any(p.get("name") == "page" for p in operation.get("parameters", [])):
                operation.setdefault("responses", {}).setdefault(
                    "404", {"description": "No such page (past the end, or not a number)."}
                )
    return result


_STATUS = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "database": {"type": "string", "enum": ["ok", "unavailable"]},
        "redis": {"type": "string", "enum": ["ok", "unavailable"]},
    },
    "required": ["status"],
}


def _json(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _STATUS}}}


# The probes and /metrics are plain Django views, kept off DRF's request path so that they stay
# cheap and answer even when DRF's authentication could not; they are described here instead.
PLAIN_VIEWS = {
    "/healthz": {
        "operationId": "healthz",
        "summary": "Liveness: the process is up (depends on nothing)",
        "responses": {"200": _json("Up.")},
    },
    "/readyz": {
        "operationId": "readyz",
        "summary": "Readiness: the database and, when configured, Redis answer",
        "responses": {"200": _json("Ready."), "503": _json("The database or Redis is down.")},
    },
    "/metrics": {
        "operationId": "metrics",
        "summary": "Prometheus metrics (protect at the network level)",
        "responses": {
            "200": {
                "description": "Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    },
}


def document_plain_views(result, generator, request, public):
    for path, operation in PLAIN_VIEWS.items():
        result.setdefault("paths", {})[path] = {
            "get": {"tags": ["operations"], "security": [{}], **operation}
        }
    return result


def document_body_limit(result, generator, request, public):
    """Every request body is capped in front of the application (CONTROLLER_MAX_BODY_BYTES):
    say so wherever an operation takes one."""
    for path in result.get("paths", {}).values():
        for operation in path.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation.setdefault("responses", {}).setdefault(
                    "413",
                    {
                        "description": "Request body over CONTROLLER_MAX_BODY_BYTES (1 MiB by "
                        "default); refused before it is read."
                    },
                )
    return result
