import logging

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)


@require_GET
def healthz(request):
    """The process is up; depends on nothing."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request):
    """Ready to serve: the database answers and, when configured, Redis too."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except DatabaseError as exc:
        logger.warning("readyz: database unavailable: %s", exc)
        checks["database"] = "unavailable"
    if settings.REDIS_URL:
        try:
            cache.client.get_client().ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any client error means not ready
            logger.warning("readyz: redis unavailable: %s", exc)
            checks["redis"] = "unavailable"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", **checks}, status=200 if ready else 503
    )


@require_GET
def metrics(request):
    """Prometheus text exposition; protect it at the network level, like the seed's ports."""
    from apps.ops import metrics as controller_metrics

    return HttpResponse(controller_metrics.render(), content_type=controller_metrics.CONTENT_TYPE)
