"""The PostgreSQL statement timeout, kept in the database itself for pooled connections.

A controller that reaches PostgreSQL through pgbouncer in transaction mode cannot send the
timeout as a start-up option (pgbouncer refuses `options`), and a plain `SET` would stay on
whichever server connection ran it. A role's default in a database is applied by PostgreSQL to
every new session of that role there, so it reaches every server connection the pooler opens.
PostgreSQL applies it when a session starts: server connections the pooler opened before it was
stored keep their old value until the pooler replaces them (pgbouncer's RECONNECT command, or
its server_lifetime).
"""

import logging

from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)


def store_statement_timeout(using: str = "default") -> int | None:
    """Make DATABASE_STATEMENT_TIMEOUT the connecting role's default in its database; the
    timeout in milliseconds, or None when there is nothing to do (not PostgreSQL, or not
    pooled: then the timeout travels with each connection)."""
    connection = connections[using]
    if connection.vendor != "postgresql" or not settings.DATABASE_TRANSACTION_POOLING:
        return None
    milliseconds = settings.DATABASE_STATEMENT_TIMEOUT * 1000
    with connection.cursor() as cursor:
        # Any role may set its own defaults; PostgreSQL quotes the database name itself.
        cursor.execute(
            "SELECT format('ALTER ROLE CURRENT_USER IN DATABASE %%I SET statement_timeout = %%s',"
            " current_database(), %s)",
            [milliseconds],
        )
        cursor.execute(cursor.fetchone()[0])
    logger.info(
        "statement_timeout %s ms stored as the default of this role in this database "
        "(DATABASE_TRANSACTION_POOLING); the pooler's existing server connections take it when "
        "replaced (pgbouncer: RECONNECT)",
        milliseconds,
    )
    return milliseconds
