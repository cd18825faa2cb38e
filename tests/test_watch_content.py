"""The watch answer carries the content: an agent applies a change from it alone, and falls back
to GET /config/agent when the answer lacks the content (a controller of an older release)."""

import json

import pytest
import requests

from agent.daemon import AgentDaemon
from apps.agents.services import issue_registration_token
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.support.agent import (
    StubController,
    StubControllerHandler,
    write_cached_config,
    write_credentials,
)
from tests.support.processes import start_agent, start_controller, start_redis, wait_until
from tests.support.worker import KEY
from worker.config import mask_query

pytestmark = [pytest.mark.django_db(transaction=True)]

URL = "http://upstream.example/task"


def requests_counted(controller_url: str, endpoint: str) -> int:
    """Requests the controller answered on `endpoint`, from its /metrics (all processes)."""
    text = requests.get(f"{controller_url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("controller_requests_total{") and f'endpoint="{endpoint}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


@pytest.mark.bcrypt  # a controller process checks the admin's password
@pytest.mark.postgres
def test_the_agent_applies_changes_from_the_watch_answer_without_fetching_them(
    admin_user,
    make_worker,
    tmp_path,
):
    redis, redis_url, _ = start_redis()
    controller = agent = None
    try:
        controller, url = start_controller(redis_url=redis_url, workers=2)
        login = requests.post(
            f"{url}/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, timeout=5
        )
        admin = {"Authorization": f"Bearer {login.json()['access']}"}
        created = requests.post(
            f"{url}/config/admin",
            json={"config_url": URL, "pooling_interval": 30},
            headers=admin,
            timeout=5,
        )
        assert created.status_code == 201
        worker = make_worker()
        token, _ = issue_registration_token()
        agent = start_agent(
            url,
            [worker.base_url],
            tmp_path / "state",
            internal_key=KEY,
            registration_token=token,
        )
        wait_until(lambda: worker.version() == 1, timeout=30, message="worker on v1")
        # It should have reconciled its (empty) cache once at start, with GET /config/agent.
        assert requests_counted(url, "/config/agent") == 1
        watches_before = requests_counted(url, "/config/version")

        for version in (2, 3, 4):
            changed = requests.put(
                f"{url}/config/admin",
                json={"config_url": f"{URL}?v={version}"},
                headers=admin,
                timeout=5,
            )
            assert changed.json()["version"] == version
            wait_until(
                lambda v=version: worker.version() == v, timeout=15, message=f"worker on v{version}"
            )
            served = requests.get(worker.url("/config"), timeout=5).json()
            # GET /config masks query values; the version and uuid say which config it is.
            assert served["config_url"] == mask_query(f"{URL}?v={version}")
            assert served["uuid"] == changed.json()["uuid"]

        # It should have learnt every change from a watch answer, and fetched none of them.
        assert requests_counted(url, "/config/agent") == 1
        assert requests_counted(url, "/config/version") >= watches_before + 3
        assert "applying it" in agent.output()
        assert "fetching" not in agent.output()
    finally:
        for process in (agent, controller, redis):
            if process is not None:
                process.stop()


class OlderControllerHandler(StubControllerHandler):
    """A controller of an older release: its version answer has no content, and
    /config/agent answers the config with an ETag, or 304 when it matches."""

    def do_GET(self):
        controller = self.server_owner
        path, _, query = self.path.partition("?")
        controller.requests.append((path, self.headers.get("If-None-Match")))
        config = controller.config
        if path == "/config/version":
            self.send_json(200, {"version": config["version"], "pooling_interval": 30})
        elif self.headers.get("If-None-Match") == f'"{config["version"]}"':
            self.send_response(304)
            self.send_header("ETag", f'"{config["version"]}"')
            self.end_headers()
        else:
            body = json.dumps({**config, "created_at": "2026-12-01T00:00:00Z"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("ETag", f'"{config["version"]}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


class OlderController(StubController):
    handler_class = OlderControllerHandler


def test_an_answer_without_the_content_is_fetched_from_config_agent(
    make_worker,
    tmp_path,
):
    worker = make_worker()
    state = tmp_path / "state"
    write_credentials(state)
    cached = write_cached_config(state, URL, version=1)
    controller = OlderController()
    controller.config = cached
    controller.start()
    agent = AgentDaemon(
        controller_url=controller.url,
        worker_urls=[worker.base_url],
        internal_key=KEY,
        state_dir=str(state),
        watch=False,
    )
    try:
        agent.run_once()
        # It should confirm its cache at start with If-None-Match (304), then ask the version.
        assert controller.requests == [
            ("/config/agent", '"1"'),
            ("/config/version", None),
            ("/agent/heartbeat", ""),
        ]
        assert worker.version() == 1

        controller.config = {**cached, "version": 2, "config_url": URL + "?2"}
        controller.requests.clear()
        agent.controller_due = 0
        agent.run_once()
        # It should fetch the content the answer lacks, naming the version it holds.
        assert controller.requests == [
            ("/config/version", None),
            ("/config/agent", '"1"'),
            ("/agent/heartbeat", ""),
        ]
        assert worker.version() == 2
        held = requests.get(worker.url("/config"), timeout=5).json()
        assert held["config_url"] == mask_query(URL + "?2") and held["version"] == 2
    finally:
        agent.close()
        controller.stop()
