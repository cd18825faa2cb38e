"""Hits per version end to end: real workers count them, real agents report them in their
heartbeats (through the controller's batched heartbeat path) and GET /agents shows the totals."""

import pytest
import requests

from apps.agents.models import AgentHits
from tests.e2e.conftest import wait_for_version
from tests.support.processes import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def totals(version: int) -> tuple[int, int]:
    rows = AgentHits.objects.filter(version=version)
    return sum(r.ok for r in rows), sum(r.failed for r in rows)


def test_hits_reach_the_controller_per_agent_and_version(fleet, upstream):
    admin, workers = fleet
    url = admin.url

    for worker in workers:
        for _ in range(3):
            assert requests.get(f"{worker}/hit", timeout=10).status_code == 200
    wait_until(lambda: totals(1) == (6, 0), timeout=30, message="v1's hits at the controller")

    assert admin.change(config_url=upstream.url("/broken")).status_code == 200
    wait_for_version(workers, 2, timeout=30)
    for _ in range(4):
        assert requests.get(f"{workers[0]}/hit", timeout=10).status_code == 500
    wait_until(lambda: totals(2) == (0, 4), timeout=30, message="v2's hits at the controller")

    listed = admin.session.get(f"{url}/agents", timeout=10).json()["results"]
    by_hits = sorted(
        (item["hits"] or {"version": 2, "ok": 0, "failed": 0})["failed"] for item in listed
    )
    assert by_hits == [0, 4]
    # Later heartbeats add nothing: the counts are deltas since the previous one.
    wait_until(lambda: totals(1) == (6, 0) and totals(2) == (0, 4), timeout=5)
