"""The two operator routes that bind and change an agent's labels, against a real controller:
`POST /agent/admin` and `PATCH /agents/{id}` answer garbage, a body over the cap, no credentials
and the wrong credentials with a clear 4xx, and store nothing."""

import pytest
import requests

from apps.agents.models import Agent, RegistrationToken
from apps.agents.services import issue_registration_token, register_agent
from tests.support.clients import admin_headers, assert_write_refused
from tests.support.processes import start_controller

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

OVER_THE_CAP = b'{"labels": {"ring": "' + b"x" * (1024 * 1024 + 1) + b'"}}'


@pytest.mark.bcrypt  # a controller process checks the admin's password
def test_the_label_routes_refuse_garbage_oversized_bodies_and_wrong_credentials(admin_user):
    token, _ = issue_registration_token(labels={"ring": "main"})
    agent, agent_token = register_agent(token=token, name="a", hostname="h")
    controller, url = start_controller(redis_url=None)
    try:
        admin = admin_headers(url)
        routes = [("POST", f"{url}/agent/admin"), ("PATCH", f"{url}/agents/{agent.pk}")]
        tokens_before = RegistrationToken.objects.count()
        for method, route in routes:
            assert_write_refused(
                method,
                route,
                {"labels": {"ring": "canary"}},
                admin=admin,
                agent_token=agent_token,
                oversized=OVER_THE_CAP,
            )
        # Nothing was stored: no token issued, the agent's labels as the operator bound them.
        assert RegistrationToken.objects.count() == tokens_before
        assert Agent.objects.get(pk=agent.pk).labels == {"ring": "main"}
        # And the right credentials with a good body still work.
        changed = requests.patch(
            f"{url}/agents/{agent.pk}",
            json={"labels": {"ring": "canary"}},
            headers=admin,
            timeout=10,
        )
        assert changed.status_code == 200, changed.text
        assert Agent.objects.get(pk=agent.pk).labels == {"ring": "canary"}
    finally:
        controller.stop()
