"""HTTP clients for the controller and the workers: one requests.Session each, every call with a
connect and a read timeout, and every failure turned into one of the small exceptions below."""

import json
import logging
from typing import NamedTuple, TypeGuard

import requests

from protocol.config import CONFIG_FIELDS, valid_config
from protocol.signing import REPLAYED_PUSH, SIGNATURE_HEADER, sign

logger = logging.getLogger(__name__)

# The controller may hold a watch for `wait` seconds; the read timeout must outlast the hold.
WATCH_READ_MARGIN = 15.0
MAX_WATCH_WAIT = 60


class ControllerUnavailable(Exception):
    """The controller could not be reached or gave an answer the agent cannot use."""


class TokenRefused(Exception):
    """The controller refused the token (401): revoked, unknown, used or expired."""


class WatchNotSupported(Exception):
    """The controller refused the watch parameters (400); plain polling still works."""


class NoConfigServed(Exception):
    """The controller has no configuration yet (404 on /config/agent)."""


class WorkerHealth(NamedTuple):
    """What a worker's GET /health says: the version it runs (None when empty) and its hits,
    {version: (ok, failed)} since it started."""

    version: int | None
    hits: dict[int, tuple[int, int]]


class WorkerUnavailable(Exception):
    """The worker could not be reached or answered with a server error."""


class PushRefused(Exception):
    """The worker refused the push for a reason a retry will not fix by itself (400, 401)."""


def _describe(method: str, url: str, exc: requests.RequestException) -> str:
    # A short reason for the log; tokens travel in headers and never appear here.
    if isinstance(exc, requests.ConnectTimeout):
        reason = "connect timed out"
    elif isinstance(exc, requests.ReadTimeout):
        reason = "read timed out"
    elif isinstance(exc, requests.ConnectionError):
        reason = "connection failed"
    else:
        reason = type(exc).__name__
    return f"{method} {url}: {reason}"


class ControllerClient:
    """The controller's agent endpoints."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.session = session or requests.Session()
        # Heartbeats and pre-flight results go out while the watch thread holds `session`;
        # a Session is not meant to be shared between threads.
        self.report_session = requests.Session()
        self.agent_token: str | None = None

    def _request(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        read_timeout: float | None = None,
        session: requests.Session | None = None,
        **kwargs,
    ) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = (session or self.session).request(
                method,
                self.base_url + path,
                headers=headers,
                timeout=(self.connect_timeout, read_timeout or self.read_timeout),
                **kwargs,
            )
        except requests.RequestException as exc:
            raise ControllerUnavailable(_describe(method, self.base_url + path, exc)) from None
        if response.status_code == 401:
            raise TokenRefused(f"{method} {path}: 401")
        if response.status_code >= 500:
            raise ControllerUnavailable(f"{method} {path}: HTTP {response.status_code}")
        return response

    @staticmethod
    def _json(response: requests.Response, what: str) -> dict:
        try:
            data = response.json()
        except ValueError:
            raise ControllerUnavailable(f"{what}: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise ControllerUnavailable(f"{what}: the answer is not a JSON object")
        return data

    def register(
        self,
        registration_token: str,
        *,
        name: str = "",
        hostname: str = "",
        labels: dict[str, str] | None = None,
    ) -> dict:
        """POST /agent/register; returns {"agent_id", "agent_token", "pooling_interval", ...}."""
        response = self._request(
            "POST",
            "/agent/register",
            token=registration_token,
            json={"name": name, "hostname": hostname, "labels": labels or {}},
        )
        if response.status_code != 201:
            raise ControllerUnavailable(f"registration: HTTP {response.status_code}")
        data = self._json(response, "registration")
        if not isinstance(data.get("agent_id"), str) or not isinstance(
            data.get("agent_token"), str
        ):
            raise ControllerUnavailable("registration: the answer lacks agent_id or agent_token")
        return data

    def version(self, *, known: int | None = None, wait: int | None = None) -> dict:
        """GET /config/version, as a watch when `wait` is given: {"version", "pooling_interval",
        "content"}, where content is the version's config when the answer carries it (a
        controller of an older release answers without it) and None otherwise."""
        params = {}
        read_timeout = None
        if wait is not None:
            wait = max(0, min(int(wait), MAX_WATCH_WAIT))
            params = {"version": known or 0, "wait": wait}
            read_timeout = wait + WATCH_READ_MARGIN
        response = self._request(
            "GET",
            "/config/version",
            token=self.agent_token,
            params=params,
            read_timeout=read_timeout,
        )
        if response.status_code == 400 and wait is not None:
            raise WatchNotSupported(
                f"GET /config/version with wait: HTTP 400 {response.text[:200]}"
            )
        if response.status_code != 200:
            raise ControllerUnavailable(f"GET /config/version: HTTP {response.status_code}")
        data = self._json(response, "GET /config/version")
        version, interval = data.get("version"), data.get("pooling_interval")
        if not isinstance(version, int) or not (interval is None or isinstance(interval, int)):
            raise ControllerUnavailable("GET /config/version: unexpected answer")
        content = {field: data.get(field) for field in CONFIG_FIELDS}
        answer = {
            "version": version,
            "pooling_interval": interval,
            "content": content if valid_config(content) else None,
        }
        preflight = data.get("preflight")
        if (
            isinstance(preflight, dict)
            and isinstance(preflight.get("id"), str)
            and isinstance(preflight.get("config_url"), str)
            and isinstance(preflight.get("timeout_seconds"), int)
        ):
            answer["preflight"] = preflight
        return answer

    def preflight_result(self, preflight_id: str, worker_url: str, result: dict) -> None:
        """POST /agent/preflight with a worker's answer to a pre-flight."""
        # Sent from the pre-flight's own thread, with a session of its own.
        with requests.Session() as session:
            response = self._request(
                "POST",
                "/agent/preflight",
                token=self.agent_token,
                session=session,
                json={"id": preflight_id, "worker_url": worker_url, **result},
            )
        if response.status_code != 204:
            raise ControllerUnavailable(
                f"POST /agent/preflight: HTTP {response.status_code} {response.text[:200]}"
            )

    def config(self, *, etag_version: int | None = None) -> dict | None:
        """GET /config/agent; None when the controller answers 304 for `etag_version`."""
        headers = {}
        if etag_version:
            headers["If-None-Match"] = f'"{etag_version}"'
        response = self._request("GET", "/config/agent", token=self.agent_token, headers=headers)
        if response.status_code == 304:
            return None
        if response.status_code == 404:
            raise NoConfigServed("GET /config/agent: no configuration yet")
        if response.status_code != 200:
            raise ControllerUnavailable(f"GET /config/agent: HTTP {response.status_code}")
        return self._json(response, "GET /config/agent")

    def heartbeat(
        self,
        *,
        applied_version: int | None,
        workers: list[dict],
        hits: list[dict],
        labels: dict[str, str] | None = None,
    ) -> None:
        """POST /agent/heartbeat with what the agent applied, what each worker runs, the
        workers' hits per version since the previous heartbeat and the agent's labels (the
        controller keeps the latest)."""
        response = self._request(
            "POST",
            "/agent/heartbeat",
            token=self.agent_token,
            session=self.report_session,
            json={
                "applied_version": applied_version,
                "workers": workers,
                "hits": hits,
                "labels": labels or {},
            },
        )
        if response.status_code != 204:
            raise ControllerUnavailable(
                f"POST /agent/heartbeat: HTTP {response.status_code} {response.text[:200]}"
            )


def _detail(response: requests.Response) -> str | None:
    """The `detail` of a JSON error answer, if it has one."""
    try:
        data = response.json()
    except ValueError:
        return None
    return data.get("detail") if isinstance(data, dict) else None


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _hit_counts(value) -> dict[int, tuple[int, int]]:
    """{version: (ok, failed)} from /health's "hits"; entries that are not counts are left out
    (a worker too old to count hits has none)."""
    counts: dict[int, tuple[int, int]] = {}
    if not isinstance(value, dict):
        return counts
    for version, item in value.items():
        if not (isinstance(version, str) and version.isdigit() and isinstance(item, dict)):
            continue
        ok, failed = item.get("ok"), item.get("failed")
        if _count(ok) and _count(failed):
            counts[int(version)] = (ok, failed)
    return counts


class WorkerClient:
    """One worker: its health and signed config pushes."""

    def __init__(
        self,
        url: str,
        internal_key: str,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._key = internal_key
        self.timeout = (connect_timeout, read_timeout)
        self.session = session or requests.Session()
        # A few requests per period gain nothing from keep-alive, and a connection the worker
        # closed while idle (or a restarted worker) must not cost a failed check.
        self.session.headers["Connection"] = "close"

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise WorkerUnavailable(_describe(method, self.url + path, exc)) from None
        if response.status_code >= 500:
            raise WorkerUnavailable(f"{method} {path}: HTTP {response.status_code}")
        return response

    def health(self) -> WorkerHealth:
        """The version the worker runs (None when it has no config) and its hits."""
        response = self._request("GET", "/health")
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code != 200 or not isinstance(data, dict):
            raise WorkerUnavailable(f"GET /health: HTTP {response.status_code}")
        version = data.get("config_version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise WorkerUnavailable("GET /health: config_version is not a number")
        return WorkerHealth(version, _hit_counts(data.get("hits")))

    def preflight(self, config_url: str, timeout: float) -> dict:
        """POST /preflight, signed: the worker fetches `config_url` without applying it.
        {"status", "elapsed_ms", "error"}."""
        body = json.dumps({"config_url": config_url}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, self._key)}
        # From the pre-flight's own thread, with a session of its own.
        with requests.Session() as session:
            try:
                response = session.post(
                    self.url + "/preflight",
                    data=body,
                    headers=headers,
                    timeout=(self.timeout[0], timeout),
                )
            except requests.RequestException as exc:
                raise WorkerUnavailable(_describe("POST", self.url + "/preflight", exc)) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code != 200 or not isinstance(data, dict):
            raise WorkerUnavailable(f"POST /preflight: HTTP {response.status_code}")
        status, elapsed, error = data.get("status"), data.get("elapsed_ms"), data.get("error")
        if not (
            (status is None or (isinstance(status, int) and not isinstance(status, bool)))
            and isinstance(elapsed, int | float)
            and (error is None or isinstance(error, str))
        ):
            raise WorkerUnavailable("POST /preflight: unexpected answer")
        return {"status": status, "elapsed_ms": elapsed, "error": error}

    def push(self, config: dict) -> bool:
        """POST /config, signed. True when applied or already held; False when the worker
        answered 409 because it holds a newer version."""
        body = json.dumps(
            {
                "config_url": config["config_url"],
                "pooling_interval": config["pooling_interval"],
                "version": config["version"],
                "uuid": config["uuid"],
            },
            separators=(",", ":"),
        ).encode()
        # The signature covers these exact bytes, so they are sent as they are.
        response = self._request(
            "POST",
            "/config",
            data=body,
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, self._key)},
        )
        if response.status_code == 200:
            return True
        if response.status_code == 409:
            return False
        if response.status_code == 401:
            if _detail(response) == REPLAYED_PUSH:
                # Two agents of one worker woken by the same change push the same bytes.
                return True
            raise PushRefused("the worker refused the signature: check INTERNAL_KEY on both sides")
        raise PushRefused(f"POST /config: HTTP {response.status_code} {response.text[:200]}")
