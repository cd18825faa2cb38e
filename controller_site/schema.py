"""OpenAPI post-processing shared by every app."""


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
