"""The routes that make and change applications and environments, the scoped twins of the seed's
write routes, promotion, scheduling, API tokens and webhooks, against a real controller: garbage,
a body over the cap, no credentials and an agent's token get a clear 4xx, and nothing is
stored."""

import pytest
import requests

from apps.accounts.models import ApiToken
from apps.agents.models import RegistrationToken
from apps.agents.services import issue_registration_token, register_agent
from apps.audit.models import AuditEntry
from apps.changes.models import ChangeRequest, ScheduledChange
from apps.configs.models import ConfigVersion
from apps.scopes.models import Application, Environment
from apps.scopes.services import create_application, default_scope
from apps.webhooks.models import WebhookEndpoint
from tests.support.clients import admin_headers, assert_write_refused
from tests.support.processes import start_controller

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

LATER = "2030-01-31T09:00:00+01:00"
OVER_THE_CAP = b'{"description": "' + b"x" * (1024 * 1024 + 1) + b'"}'


def stored() -> tuple:
    return (
        list(Application.objects.order_by("name").values_list("name", "description")),
        list(Environment.objects.order_by("name").values_list("name", "approvals_required")),
        ConfigVersion.objects.count(),
        AuditEntry.objects.exclude(action=AuditEntry.LOGIN_SUCCEEDED).count(),
    )


@pytest.mark.bcrypt  # a controller process checks the admin's password
def test_the_scope_routes_refuse_garbage_oversized_bodies_and_wrong_credentials(admin_user):
    default_scope()
    create_application("payments")
    token, _ = issue_registration_token()
    _, agent_token = register_agent(token=token, name="a", hostname="h")
    controller, url = start_controller(redis_url=None)
    try:
        admin = admin_headers(url)
        routes = [
            ("POST", f"{url}/apps", {"name": "search"}),
            ("PATCH", f"{url}/apps/payments", {"description": "Cards"}),
            ("POST", f"{url}/envs", {"name": "staging"}),
            (
                "POST",
                f"{url}/apps/payments/envs/production/config/admin",
                {"config_url": "http://upstream.example/a", "pooling_interval": 30},
            ),
            # Last: from then on production's changes wait for two approvers.
            ("PATCH", f"{url}/envs/production", {"approvals_required": 2}),
        ]
        before = stored()
        for method, route, body in routes:
            assert_write_refused(
                method, route, body, admin=admin, agent_token=agent_token, oversized=OVER_THE_CAP
            )
        bad_name = requests.post(
            f"{url}/apps", json={"name": "Not A Slug!"}, headers=admin, timeout=10
        )
        assert bad_name.status_code == 400 and "name" in bad_name.json()
        unknown = requests.patch(f"{url}/envs/nope", json={"order": 1}, headers=admin, timeout=10)
        assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
        assert stored() == before
        # The right credentials with a good body still work.
        for method, route, body in routes:
            answer = requests.request(method, route, json=body, headers=admin, timeout=10)
            assert answer.status_code in (200, 201), (route, answer.text)
        assert Application.objects.get(name="payments").description == "Cards"
        assert ConfigVersion.objects.get().scope.application.name == "payments"
    finally:
        controller.stop()


@pytest.mark.bcrypt  # a controller process checks the admin's password
def test_every_scoped_write_with_a_body_refuses_garbage_and_wrong_credentials(admin_user):
    """The scoped twins of the seed's write routes are the same views behind another prefix;
    served by a real controller, each refuses as its seed route does and stores nothing."""
    default_scope()
    create_application("payments")
    token, _ = issue_registration_token()
    _, agent_token = register_agent(token=token, name="a", hostname="h")
    controller, url = start_controller(redis_url=None)
    try:
        admin = admin_headers(url)
        scoped = f"{url}/apps/payments/envs/production"
        content = {"config_url": "http://upstream.example/a", "pooling_interval": 30}
        made = requests.post(f"{scoped}/config/admin", json=content, headers=admin, timeout=10)
        assert made.status_code == 201, made.text
        routes = [
            ("PUT", f"{scoped}/config/admin", {"pooling_interval": 45}),
            ("POST", f"{scoped}/config/admin/rollback", {"version": 1}),
            ("POST", f"{scoped}/config/admin/preflight", {"config_url": content["config_url"]}),
            ("POST", f"{scoped}/agent/admin", {"labels": {"tier": "canary"}}),
            ("POST", f"{scoped}/config/admin/promote", {"from_environment": "production"}),
            ("PUT", f"{scoped}/config/admin", {"pooling_interval": 45, "publish_at": LATER}),
            # The routes outside the scopes added beside them: tokens and webhooks.
            ("POST", f"{url}/tokens", {"name": "ci", "role": "viewer"}),
            ("POST", f"{url}/webhooks", {"url": "https://hooks.example/x", "events": ["*"]}),
        ]

        def everything_stored() -> tuple:
            return (
                stored(),
                RegistrationToken.objects.count(),
                ChangeRequest.objects.count(),
                ApiToken.objects.count(),
                WebhookEndpoint.objects.count(),
                ScheduledChange.objects.count(),
            )

        before = everything_stored()
        for method, route, body in routes:
            assert_write_refused(
                method, route, body, admin=admin, agent_token=agent_token, oversized=OVER_THE_CAP
            )
        assert everything_stored() == before
    finally:
        controller.stop()
