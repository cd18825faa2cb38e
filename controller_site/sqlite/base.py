"""SQLite, with the database file private (0600) from the moment it exists.

SQLite creates a missing file with the process umask (often world-readable) and gives its
journal files the mode of the database; the file holds live refresh tokens, so it is created
empty and private first.
"""

import contextlib
import os

from django.db.backends.sqlite3 import base


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        name = str(conn_params.get("database", ""))
        if name and not name.startswith("file:") and name != ":memory:":
            with contextlib.suppress(FileExistsError):
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return super().get_new_connection(conn_params)
