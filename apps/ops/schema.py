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
