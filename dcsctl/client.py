"""Where the controller is and who calls it (flags, environment, `~/.config/dcs/config.yaml`), and
one call to it: every failure becomes a `Failed` with one line that says what is wrong."""

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

TIMEOUT_SECONDS = 15


class Failed(Exception):
    """What to print (one line) and the exit status."""

    def __init__(self, message: str, status: int = 1, http_status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        # The controller's answer, when it refused: callers tell a 404 or a 412 by it.
        self.http_status = http_status


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dcs" / "config.yaml"


def read_config() -> dict:
    path = config_path()
    if not path.exists():
        return {}
    try:
        found = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise Failed(f"cannot read {path}: {exc}", 2) from None
    if not isinstance(found, dict):
        raise Failed(f"{path} must hold `url` and `token`", 2)
    return found


def write_config(url: str, token: str) -> Path:
    """Keep the URL and token for the next calls, readable by this user only."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 before the token is written, so that it is never readable by others.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(descriptor, "w") as file:
        yaml.safe_dump({"url": url, "token": token}, file)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return path


@dataclass
class Controller:
    url: str
    token: str

    @classmethod
    def from_options(cls, url: str | None, token: str | None) -> "Controller":
        """The flags first, then DCS_URL and DCS_TOKEN, then the file `dcsctl login` wrote."""
        saved = read_config() if not (url and token) else {}
        url = url or os.environ.get("DCS_URL") or saved.get("url")
        token = token or os.environ.get("DCS_TOKEN") or saved.get("token")
        if not url:
            raise Failed("no controller: give --url, set DCS_URL, or run `dcsctl login`", 2)
        if not token:
            raise Failed("no API token: give --token, set DCS_TOKEN, or run `dcsctl login`", 2)
        return cls(url.rstrip("/"), token)

    def call(
        self, method: str, path: str, body: dict | None = None, headers: dict | None = None
    ) -> tuple[int, dict]:
        """(status, JSON body) of a 2xx answer; Failed with the controller's own words
        otherwise."""
        sent = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        try:
            answer = requests.request(
                method,
                self.url + path,
                json=body,
                headers={**sent, **(headers or {})},
                timeout=TIMEOUT_SECONDS,
            )
        except requests.RequestException as exc:
            raise Failed(f"cannot reach {self.url}: {type(exc).__name__}") from None
        try:
            data = answer.json() if answer.content else {}
        except ValueError:
            data = {}
        if answer.status_code >= 400:
            raise Failed(
                f"{method} {path}: {answer.status_code} {reason_of(data, answer)}",
                http_status=answer.status_code,
            )
        return answer.status_code, data

    def listed(self, path: str) -> list:
        """Every item of a list route, page after page (the API pages its lists)."""
        _, page = self.call("GET", path)
        if isinstance(page, list):
            return page
        items = list(page.get("results", []))
        while page.get("next"):
            following = str(page["next"])
            if not following.startswith(self.url):
                raise Failed(f"the controller's next page is elsewhere: {following}")
            _, page = self.call("GET", following[len(self.url) :])
            items.extend(page.get("results", []))
        return items


def reason_of(data, answer) -> str:
    """The controller's explanation: its `detail`, or each field's first message."""
    if isinstance(data, dict):
        if "detail" in data:
            return str(data["detail"])
        fields = [
            f"{field}: {messages[0] if isinstance(messages, list) and messages else messages}"
            for field, messages in data.items()
        ]
        if fields:
            return "; ".join(fields)
    return answer.reason or "error"
