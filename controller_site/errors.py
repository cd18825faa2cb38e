"""The base of the errors services raise, and the one place that turns errors into HTTP answers.

Each app defines its own errors (apps/configs/errors.py, ...) on ServiceError; the API's
EXCEPTION_HANDLER answers them, the config rules' InvalidConfig and database failures here.
A database failure raised outside the API's views (the admin, the session a middleware reads)
reaches Django's handler500, `server_error` below, which answers it the same way.
"""

import logging
import sqlite3
import sys

import psycopg
from django.db import DataError
from django.db import InterfaceError as DjangoInterfaceError
from django.db import OperationalError as DjangoOperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from protocol.rules import InvalidConfig

logger = logging.getLogger(__name__)

DATABASE_DOWN = "The database is unavailable; try again shortly."
RETRY_AFTER_SECONDS = "5"


# SQLite's answers that mean "not now" rather than "this query is wrong": another process holds
# the database, or the file cannot be opened. Every other SQLite error is a bug in a query.
SQLITE_UNAVAILABLE = (
    "database is locked",
    "database table is locked",
    "unable to open database file",
    "disk i/o error",
)


def is_database_failure(exc: BaseException | None) -> bool:
    """Whether `exc` says the database could not answer: unreachable, a connection lost, no
    pooled connection free within the pool's timeout, a statement or lock wait cancelled by the
    statement timeout, SQLite busy. Those are a moment to retry (503). Every other database
    error (a query the database refuses: malformed JSON, an unknown column, a constraint) is a
    bug and must be seen as one, not answered as an outage. Django's InterfaceError (a closed
    connection) is not a DatabaseError, and the pool's errors are psycopg's own when raised
    outside Django's wrapper: both count."""
    if isinstance(exc, DjangoInterfaceError | psycopg.InterfaceError):
        return True
    if not isinstance(exc, DjangoOperationalError | psycopg.OperationalError):
        return False
    cause = exc.__cause__ if isinstance(exc, DjangoOperationalError) else exc
    if isinstance(cause, sqlite3.OperationalError):
        return str(cause).lower().startswith(SQLITE_UNAVAILABLE)
    return True


class ServiceError(Exception):
    """A request the service refuses; `status_code` is the HTTP answer."""

    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def body(self) -> dict:
        """The answer's JSON; an error with more to say than `detail` adds its fields."""
        return {"detail": self.detail}

    def headers(self) -> dict | None:
        """Headers of the answer (a Retry-After, say); none by default."""
        return None


class NotFoundError(ServiceError):
    status_code = status.HTTP_404_NOT_FOUND


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ServiceError):
        return Response(exc.body(), status=exc.status_code, headers=exc.headers())
    if isinstance(exc, InvalidConfig):
        return Response({exc.field: [exc.message]}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DataError):
        # A value the database cannot store (a NUL or a lone surrogate in a JSON string, say)
        # is bad input, not an outage: 400, and the database is untouched.
        return Response(
            {"detail": "The request holds a value that cannot be stored."},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if is_database_failure(exc):
        view = context.get("view")
        logger.error("database error in %s: %s", type(view).__name__, exc)
        return Response(
            {"detail": DATABASE_DOWN},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    return drf_exception_handler(exc, context)


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's handler500. An overloaded or unreachable database is a moment to retry, not a
    fault of the server: 503 with Retry-After, wherever in Django it was raised. Django calls
    this inside its `except` block, so the exception is the one being handled; it has already
    logged it with its traceback."""
    if is_database_failure(sys.exc_info()[1]):
        return JsonResponse(
            {"detail": DATABASE_DOWN},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    return defaults.server_error(request)
