"""The base of the errors services raise, and the one place that turns errors into HTTP answers.

Each app defines its own errors (apps/configs/errors.py, ...) on ServiceError; the API's
EXCEPTION_HANDLER answers them, the config rules' InvalidConfig and database failures here.
"""

import logging

from django.db import DatabaseError, DataError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from protocol.rules import InvalidConfig

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request the service refuses; `status_code` is the HTTP answer."""

    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def body(self) -> dict:
        """The answer's JSON; an error with more to say than `detail` adds its fields."""
        return {"detail": self.detail}


class NotFoundError(ServiceError):
    status_code = status.HTTP_404_NOT_FOUND


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ServiceError):
        return Response(exc.body(), status=exc.status_code)
    if isinstance(exc, InvalidConfig):
        return Response({exc.field: [exc.message]}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DataError):
        # A value the database cannot store (a NUL or a lone surrogate in a JSON string, say)
        # is bad input, not an outage: 400, and the database is untouched.
        return Response(
            {"detail": "The request holds a value that cannot be stored."},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, DatabaseError):
        view = context.get("view")
        logger.error("database error in %s: %s", type(view).__name__, exc)
        return Response(
            {"detail": "The database is unavailable; try again shortly."},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    return drf_exception_handler(exc, context)
