"""The optional YAML settings file (`--config FILE` or CONFIG_FILE), read by settings.py.

A file's keys are the settings' environment names in lower case (`database_url`, `internal_key`),
plus a few short names that depend on which process reads it (`bind`, `state_dir`,
`worker_urls`). Precedence is flag, then environment, then file, then default. Every problem is
reported with the file and the key, and stops the process before anything starts.
"""

import difflib
import os
import re
import stat
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

# The process that reads the file, from the management command being run. The three daemons
# always read their own role; other commands (show_settings, migrate) read CONFIG_ROLE, or the
# controller's role without it.
ROLES = {"run_controller": "controller", "run_agent": "agent", "run_worker": "worker"}
ALIASES = {
    "controller": {"bind": "CONTROLLER_BIND", "workers": "CONTROLLER_WORKERS"},
    "worker": {"bind": "WORKER_BIND", "threads": "WORKER_THREADS"},
    "agent": {
        "state_dir": "AGENT_STATE_DIR",
        "worker_urls": "WORKER_URL",
        "labels": "AGENT_LABELS",
    },
}
SECRET_ENDINGS = ("SECRET_KEY", "PASSWORD", "INTERNAL_KEY", "TOKEN")


class ConfigFileError(Exception):
    """A settings file that cannot be used; the message names the file and the key."""


def is_secret(name: str) -> bool:
    return name.endswith(SECRET_ENDINGS)


def role_from_argv(argv: list[str], requested: str | None = None) -> str:
    """The role whose short key names the file uses.

    A daemon's own role wins over CONFIG_ROLE: a process started by another (run_stack starts
    all three) inherits its parent's CONFIG_ROLE, which names the parent's role, not its own.
    """
    command = argv[1] if len(argv) > 1 else ""
    if command in ROLES:
        return ROLES[command]
    return check_role(requested or "controller")


def check_role(role: str) -> str:
    if role not in ALIASES:
        raise ConfigFileError(
            f"CONFIG_ROLE must be one of {', '.join(sorted(ALIASES))}, got {role!r}"
        )
    return role


def add_config_argument(parser) -> None:
    """List `--config FILE` in a command's --help. manage.py has already taken the flag off the
    command line (settings are read before any command parses its flags), so this only shows it."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML settings file, like CONFIG_FILE; read before the command starts.",
    )


def take_config_file(argv: list[str]) -> str | None:
    """Remove `--config FILE` or `--config=FILE` from the command line and return FILE.

    Settings are read before any command parses its flags, so manage.py takes the flag out
    for every command, Django's own included.
    """
    for index, arg in enumerate(argv):
        if arg == "--config":
            path = argv[index + 1] if index + 1 < len(argv) else ""
            del argv[index : index + 2]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
            del argv[index]
        else:
            continue
        if not path:
            raise ConfigFileError("--config needs a file name: --config FILE")
        return path
    return None


class ConfigFile:
    """The parsed file: values by environment name, and where each came from."""

    def __init__(self, path: str | None, role: str) -> None:
        self.path = path
        self.role = role
        self.values: dict[str, object] = {}
        self.keys: dict[str, str] = {}
        if path:
            self._load(Path(path))

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigFileError(f"{path}: cannot read the file: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigFileError(f"{path}: invalid YAML{where}: {exc.problem}") from None
        except yaml.YAMLError as exc:
            raise ConfigFileError(f"{path}: invalid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigFileError(f"{path}: the file must hold a mapping of keys to values")
        aliases = ALIASES.get(self.role, {})
        for key, value in data.items():
            if not isinstance(key, str):
                raise ConfigFileError(f"{path}: key {key!r} is not a name")
            name = aliases.get(key, key.upper())
            if name in self.keys:
                # `worker_urls` and `worker_url` both name WORKER_URL: one would silently win.
                raise ConfigFileError(
                    f"{path}: key '{key}' sets the same setting as key '{self.keys[name]}'"
                )
            self.values[name] = value
            self.keys[name] = key
        if self._holds_secrets() and _readable_by_others(path):
            sys.stderr.write(
                f"WARNING: {path} holds secrets but is readable by group or others; "
                f"run: chmod 600 {path}\n"
            )

    def _holds_secrets(self) -> bool:
        for name, value in self.values.items():
            if is_secret(name):
                return True
            # A password inside a URL (postgres://user:password@host/db) is a secret too.
            items = value if isinstance(value, list) else [value]
            if any(isinstance(item, str) and _url_password(item) for item in items):
                return True
        return False

    def error(self, name: str, message: str) -> ConfigFileError:
        return ConfigFileError(f"{self.path}: key '{self.keys.get(name, name.lower())}': {message}")

    def check_unknown(self, known: set[str]) -> None:
        """Refuse keys no setting reads, suggesting the closest known key."""
        aliases = ALIASES.get(self.role, {})
        inverse = {name: alias for alias, name in aliases.items()}
        names = {inverse.get(name, name.lower()) for name in known}
        for name, key in self.keys.items():
            if name not in known:
                close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigFileError(f"{self.path}: unknown key '{key}'{hint}")


def _url_password(value: str) -> str | None:
    if "://" not in value:
        return None
    try:
        return urlsplit(value).password
    except ValueError:
        return None


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


# Query parameters whose values are secrets (?password=, ?sslpassword=, ?token=, ?api_key=).
_SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)


def mask_url(text: str) -> str:
    """`text` with the password of a URL (user:password@host) and the values of secret-looking
    query parameters replaced by ********."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    if sep and "@" in rest.split("/", 1)[0]:
        credentials, _, host = rest.rpartition("@")
        if ":" in credentials:
            rest = f"{credentials.split(':', 1)[0]}:********@{host}"
    base, mark, query = rest.partition("?")
    if mark:
        fragment = ""
        if "#" in query:
            query, _, fragment = query.partition("#")
            fragment = "#" + fragment
        items = []
        for item in query.split("&"):
            key, eq, _ = item.partition("=")
            items.append(f"{key}=********" if eq and _SECRET_PARAMETER.search(key) else item)
        rest = f"{base}?{'&'.join(items)}{fragment}"
    return f"{scheme}{sep}{rest}"


def _shown(name: str, value) -> str:
    """A value as an error message may show it: never a secret's."""
    if is_secret(name):
        return f"a {type(value).__name__} (not shown: {name} is a secret)"
    if isinstance(value, str):
        return repr(mask_url(value))
    if isinstance(value, list):
        return repr([mask_url(item) if isinstance(item, str) else item for item in value])
    return repr(value)


def convert(file: ConfigFile, name: str, kind: str):
    """The file's value for `name` as `kind` (str, int, float, bool, list, url, urls)."""
    value = file.values[name]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise file.error(name, f"must be true or false, got {_shown(name, value)}")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise file.error(name, f"must be a whole number, got {_shown(name, value)}")
    if kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise file.error(name, f"must be a number, got {_shown(name, value)}")
    if kind == "labels":
        # A mapping (`labels: {ring: canary}`) or the environment's form, "ring=canary,zone=a".
        if isinstance(value, dict):
            return value
        if isinstance(value, str):
            return value
        raise file.error(name, f"must be a mapping of label names to values, got {value!r}")
    if kind in ("list", "urls"):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise file.error(name, f"must be a list of strings, got {_shown(name, value)}")
        items = [item.strip() for item in items if item.strip()]
        if kind == "urls":
            for item in items:
                _check_url(file, name, item)
        return items
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise file.error(name, f"must be a string, got {_shown(name, value)}")
    value = str(value)
    if kind == "url":
        _check_url(file, name, value)
    return value


def _check_url(file: ConfigFile, name: str, value: str) -> None:
    if not _is_url(value):
        raise file.error(name, f"must be a URL such as http://host:port, got {_shown(name, value)}")


def _is_url(value: str) -> bool:
    # "controller:8080" parses as scheme "controller" and path "8080": insist on "scheme://".
    if "://" not in value:
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    if parts.scheme in ("http", "https"):
        return bool(parts.hostname)
    return bool(parts.scheme and (parts.netloc or parts.path))


def current() -> ConfigFile:
    """The settings file of this process, named by CONFIG_FILE (manage.py sets it from --config)."""
    role = check_role(os.environ.get("CONFIG_ROLE") or "controller")
    return ConfigFile(os.environ.get("CONFIG_FILE") or None, role)
