import os
import time

import pytest
from django.core.cache import cache
from django.db import connection
from rest_framework.test import APIClient

from apps.agents import auth as agent_auth
from apps.configs.agent_calls import config_body
from apps.scopes.services import forget_default_scope
from tests.support.receiver import Receiver
from tests.support.upstream import UpstreamServer
from tests.support.worker import KEY, WorkerProcess

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "Correct-Horse-9!"


def unavailable(reason: str) -> None:
    """Skip for a missing service, or fail when REQUIRE_SERVICES=1 says it must be there."""
    if REQUIRE_SERVICES:
        pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def redis_available() -> bool:
    from django.conf import settings

    if not settings.REDIS_URL:
        return False
    try:
        cache.client.get_client().ping()
    except Exception:  # noqa: BLE001 - any failure means unavailable
        return False
    return True


def pytest_runtest_setup(item):
    if item.get_closest_marker("postgres") and connection.vendor != "postgresql":
        unavailable("this test needs PostgreSQL (set DATABASE_URL)")
    if item.get_closest_marker("redis") and not redis_available():
        unavailable("this test needs Redis (set REDIS_URL)")


def clear_cache() -> None:
    """Delete the keys this cache made, and only those: `cache.clear()` on Redis would empty
    the whole database REDIS_URL names, whatever else it holds."""
    if hasattr(cache, "delete_pattern"):
        cache.delete_pattern("*")
    else:
        cache.clear()  # the in-process cache, private to this test run


@pytest.fixture(autouse=True)
def _fresh_state():
    clear_cache()
    # Test databases reuse version numbers, which a running controller never does.
    config_body.cache_clear()
    agent_auth.reset()
    # A flushed database (a transactional test) made the default scope again, with a new id.
    forget_default_scope()
    yield
    clear_cache()


# bcrypt is slow by design (a fifth of a second a hash), and most tests log an admin in. They hash
# with MD5; the rest keep the production list: those marked `bcrypt` (the hashing is what they
# test, or a controller process, which hashes as production does, checks the password), and
# every test under tests/e2e/ (its conftest).
FAST_PASSWORD_HASHER = "django.contrib.auth.hashers.MD5PasswordHasher"


@pytest.fixture(autouse=True)
def _fast_password_hashing(request, settings):
    if request.node.get_closest_marker("bcrypt") is None:
        settings.PASSWORD_HASHERS = [FAST_PASSWORD_HASHER, *settings.PASSWORD_HASHERS]


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser(email=ADMIN_EMAIL, password=ADMIN_PASSWORD)


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def admin_api(admin_user):
    client = APIClient()
    response = client.post(
        "/login", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, format="json"
    )
    assert response.status_code == 200, response.content
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['access']}")
    return client


@pytest.fixture
def registered_agent(db):
    from apps.agents.services import issue_registration_token, register_agent

    token, _ = issue_registration_token()
    agent, agent_token = register_agent(token=token, name="test-agent", hostname="host-1")
    return agent, agent_token


@pytest.fixture
def agent_api(registered_agent):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {registered_agent[1]}")
    return client


@pytest.fixture
def publish(db, django_capture_on_commit_callbacks):
    """publish_config with its after-commit announcements run, as they are outside a test."""
    from apps.configs.actions import publish_config

    def _publish(config_url: str = "http://upstream.example/task", pooling_interval: int = 30):
        with django_capture_on_commit_callbacks(execute=True):
            return publish_config(config_url=config_url, pooling_interval=pooling_interval)[0]

    return _publish


class SentPreflights(list):
    """The pre-flight requests the controller sent out, as the agents hear them."""

    def wait_for_id(self, seconds: float = 10) -> str:
        deadline = time.monotonic() + seconds
        while not self and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self, "no pre-flight request was sent"
        return self[-1]["id"]


@pytest.fixture
def sent_preflights(monkeypatch) -> SentPreflights:
    """Every pre-flight request sent during the test, passed on as usual: a test answers one as
    its agent would, whichever cache holds the requests (the local one has no key listing)."""
    from apps.configs import notifications

    sent = SentPreflights()
    send = notifications.publish_preflight

    def publish_preflight(request: dict) -> None:
        sent.append(request)
        send(request)

    monkeypatch.setattr(notifications, "publish_preflight", publish_preflight)
    return sent


@pytest.fixture
def upstream():
    """The upstream stub a config_url points at (tests.support.upstream lists its paths)."""
    with UpstreamServer() as server:
        yield server


@pytest.fixture
def receiver():
    """A webhook receiver on 127.0.0.1 (tests.support.receiver)."""
    with Receiver() as server:
        yield server


@pytest.fixture
def make_worker(tmp_path):
    """Start real workers (`manage.py run_worker`); each is stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def make(key: str = KEY) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, key=key)
        started.append(worker)
        return worker.start()

    yield make
    for worker in started:
        worker.stop()
