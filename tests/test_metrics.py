"""GET /metrics: the controller's series, across gunicorn processes, and the agent's opt-in ones."""

import threading

import pytest
import requests

from tests.support.metrics import DEFAULT_SCOPE, sample
from tests.support.processes import free_port, start_controller, wait_until


@pytest.mark.django_db
def test_metrics_show_requests_version_agents_and_notifications(api, publish, registered_agent):
    api.get("/healthz")
    api.get("/no-such-page")
    publish()
    text = api.get("/metrics").content.decode()
    assert sample(text, "controller_requests_total", endpoint="/healthz", status="200") >= 1
    assert sample(text, "controller_requests_total", endpoint="unmatched", status="404") >= 1
    assert sample(text, "controller_request_duration_seconds_count", endpoint="/healthz") >= 1
    assert sample(text, "controller_config_version", **DEFAULT_SCOPE) == 1
    agents = sample(text, "controller_agents", status="never_seen", **DEFAULT_SCOPE) + sample(
        text, "controller_agents", status="active", **DEFAULT_SCOPE
    )
    assert agents == 1
    assert sample(text, "controller_agents", status="revoked", **DEFAULT_SCOPE) == 0
    assert sample(text, "controller_notifications_sent_total", type="config") >= 1
    assert sample(text, "controller_database_up") == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_counts_add_up_across_gunicorn_processes_and_include_held_watches(registered_agent):
    _, agent_token = registered_agent
    process, url = start_controller(redis_url=None, workers=2)
    try:

        def healthz_count() -> float:
            text = requests.get(f"{url}/metrics", timeout=5).text
            return sample(text, "controller_requests_total", endpoint="/healthz") or 0

        before = healthz_count()
        for _ in range(20):
            requests.get(f"{url}/healthz", timeout=5)
        # Whichever process answers the scrape, it reports all twenty.
        for _ in range(6):
            assert healthz_count() == before + 20
        pids = {
            line.split("Booting worker with pid: ")[1].strip()
            for line in process.output().splitlines()
            if "Booting worker with pid" in line
        }
        assert len(pids) == 2

        headers = {"Authorization": f"Bearer {agent_token}"}
        watch = threading.Thread(
            target=requests.get,
            args=(f"{url}/config/version?version=0&wait=3",),
            kwargs={"headers": headers, "timeout": 10},
        )
        watch.start()
        wait_until(
            lambda: (
                sample(requests.get(f"{url}/metrics", timeout=5).text, "controller_watches_held")
                == 1
            ),
            timeout=10,
            message="the held watch is counted",
        )
        watch.join()
        text = requests.get(f"{url}/metrics", timeout=5).text
        assert sample(text, "controller_watches_held") == 0
        assert (
            sample(text, "controller_requests_total", endpoint="/config/version", status="200") == 1
        )
        assert (
            sample(text, "controller_request_duration_seconds_sum", endpoint="/config/version") >= 3
        )
    finally:
        process.stop()


def test_agent_metrics_are_off_by_default_and_served_when_asked(tmp_path):
    from prometheus_client import CollectorRegistry

    from agent.metrics import MeasuredAgentDaemon, serve_metrics

    registry = CollectorRegistry()
    agent = MeasuredAgentDaemon(
        controller_url="http://127.0.0.1:9",
        worker_urls=["http://127.0.0.1:9"],
        internal_key="k" * 32,
        state_dir=str(tmp_path),
        registry=registry,
        connect_timeout=0.2,
        read_timeout=0.2,
    )
    agent.run_once()
    port = free_port()
    serve_metrics("127.0.0.1", port, registry)
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert sample(text, "agent_applied_version") == 0
    assert sample(text, "agent_registered") == 0
    assert sample(text, "agent_worker_up", worker="http://127.0.0.1:9") == 0
    assert sample(text, "agent_failures_total", target="worker") >= 1
    assert sample(text, "agent_pushes_total", result="applied") == 0
