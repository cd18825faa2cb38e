"""The HTTP clients a test talks to the controller with: an APIClient carrying a bearer token
(an agent's, a registration token, an admin's access token), and the ASGI stack production
serves."""

import asyncio
import json

from rest_framework.test import APIClient


def bearer(token: str) -> APIClient:
    """A DRF test client that sends `Authorization: Bearer <token>` with every request."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def api_as(user) -> APIClient:
    """A client holding the access token POST /login would give `user`: bound to its password."""
    from apps.accounts.services import issue_tokens

    return bearer(str(issue_tokens(user).access_token))


def client_for(email: str, *roles: str, superuser: bool = False) -> APIClient:
    """A client of a new user holding `roles` everywhere (or a superuser); `client.user` is
    the user."""
    from apps.accounts.models import User
    from apps.accounts.services import set_roles

    user = User.objects.create_user(email=email, password=None, is_superuser=superuser)
    set_roles(user, roles)
    client = api_as(user)
    client.user = user
    return client


def admin_headers(url: str) -> dict[str, str]:
    """The seeded admin's Authorization header, from POST /login on a running controller."""
    import requests

    from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

    login = requests.post(
        f"{url}/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, timeout=10
    )
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access']}"}


def assert_write_refused(
    method: str, route: str, body: dict, *, admin: dict, agent_token: str, oversized: bytes
) -> None:
    """A running controller's write route answers garbage 400, a body over the cap 413, and no
    credentials or an agent's token 401."""
    import requests

    as_json = {**admin, "Content-Type": "application/json"}
    garbage = requests.request(method, route, data=b"{not json", headers=as_json, timeout=10)
    assert garbage.status_code == 400, (route, garbage.text)
    too_large = requests.request(method, route, data=oversized, headers=as_json, timeout=10)
    assert too_large.status_code == 413, route
    anonymous = requests.request(method, route, json=body, timeout=10)
    assert anonymous.status_code == 401, route
    agent = {"Authorization": f"Bearer {agent_token}"}
    as_the_agent = requests.request(method, route, json=body, headers=agent, timeout=10)
    assert as_the_agent.status_code == 401, route


class ServedAnswer:
    """An answer of the served stack, read as a test client's answer is read."""

    def __init__(self, status: int, headers: list, body: bytes) -> None:
        self.status_code = status
        self.headers = {name.decode().lower(): value.decode() for name, value in headers}
        self.content = body

    def json(self):
        return json.loads(self.content)

    def __getitem__(self, name: str) -> str:
        return self.headers[name.lower()]


class ServedClient:
    """GETs through the ASGI application production serves (`controller_site.asgi`), where
    GET /config/version and GET /config/agent are answered in front of Django; an APIClient
    reaches the DRF views behind it instead. The database work runs on other threads, so tests
    using this need `django_db(transaction=True)`."""

    def __init__(self, token: str | None = None) -> None:
        self.authorization = f"Bearer {token}" if token else None

    def get(self, path: str, **headers: str) -> ServedAnswer:
        return asyncio.run(self._get(path, headers))

    async def _get(self, path: str, extra: dict[str, str]) -> ServedAnswer:
        # Imported when used: building the application needs Django set up.
        from controller_site.asgi import application

        path, _, query = path.partition("?")
        headers = [(b"host", b"testserver")]
        if self.authorization:
            headers.append((b"authorization", self.authorization.encode()))
        for name, value in extra.items():  # Django's test-client names: HTTP_IF_NONE_MATCH
            headers.append(
                (name.removeprefix("HTTP_").replace("_", "-").lower().encode(), value.encode())
            )
        scope = http_scope("GET", path, query, headers)
        # The served stack (the body limit in front of the watch endpoint in front of Django),
        # rebuilt with a hub of its own for this event loop.
        watch = application.app
        app = type(application)(type(watch)(watch.fallback), application.max_bytes)
        sent: list[dict] = []
        requested = False

        async def receive() -> dict:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client stays until the answer is in
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        try:
            await app(scope, receive, send)
        finally:
            await app.app.hub.stop()
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return ServedAnswer(start["status"], start.get("headers", []), body)


def http_scope(method: str, path: str, query: str, headers: list) -> dict:
    """The ASGI scope of a plain HTTP request from 127.0.0.1, as a server would make it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
