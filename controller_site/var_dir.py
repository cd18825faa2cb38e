"""The controller's local state under VAR_DIR: the development database and secret key.

Settings call these with the directory they read; nothing here reads the environment.
"""

import contextlib
import os
import secrets
from pathlib import Path


def make_var_dir(var_dir: Path) -> None:
    # Private from the start: it holds the SQLite database (live refresh tokens) and the keys.
    var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists: never readable by others, not even
    for the moment between writing it and a chmod."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def development_secret_key(var_dir: Path) -> str:
    # With DEBUG on, a key is generated once and kept so sessions survive restarts.
    path = var_dir / "secret_key"
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    make_var_dir(var_dir)
    private_file(path)
    key = secrets.token_urlsafe(50)
    path.write_text(key)
    return key
